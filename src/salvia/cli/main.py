"""`salvia server | status | experiments list|describe | logs | iam ... | audit`."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from salvia.cli.access import add_commands as add_access_commands
from salvia.cli.tables import fields, table
from salvia.config import DEFAULT_PORT, load_settings
from salvia.runstate import read_state


def _client(args: argparse.Namespace, service: str = "sagemaker") -> Any:
    import boto3  # a client of the public API, like any SageMaker user's code
    from botocore.config import Config

    settings = load_settings(home=args.home)
    url = args.endpoint_url or os.environ.get("SALVIA_ENDPOINT_URL")
    if not url:
        state = read_state(settings) or {}
        url = state.get("url") or f"http://127.0.0.1:{DEFAULT_PORT}"
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=settings.region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "salvia"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "salvia"),
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
    )


def cmd_server(args: argparse.Namespace) -> int:
    from salvia.server import serve

    try:
        settings = load_settings(
            home=args.home,
            host=args.host,
            port=args.port,
            auth_mode=args.auth_mode,
            insecure_open_access=True if args.insecure_open_access else None,
        )
    except ValueError as error:
        print(f"salvia server: {error}", file=sys.stderr)
        return 2
    if args.demo:
        threading.Thread(target=_seed_demo_when_ready, args=(settings,), daemon=True).start()
    serve(settings)
    return 0


def _seed_demo_when_ready(settings: Any) -> None:
    from salvia.demo import seed_demo

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = read_state(settings)
        if state and _healthy(state["url"]):
            try:
                seed_demo(state["url"], settings.region)
                print(
                    f"Salvia is ready at {state['url']} (demo experiment 'salvia-demo'; "
                    f"Studio at {state['url']}/studio)"
                )
            except Exception as error:  # the demo is a convenience: never take the server down
                print(f"demo seeding failed: {error}", file=sys.stderr)
            return
        time.sleep(0.2)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(home=args.home)
    state = read_state(settings)
    if state is None or not _alive(int(state.get("pid", 0))):
        print(f"Salvia is not running (home {settings.home}).")
        return 1
    healthy = _healthy(state["url"])
    uptime = int(time.time() - float(state.get("started", time.time())))
    print(
        fields(
            [
                ("status", "running" if healthy else "not answering"),
                ("url", state["url"]),
                ("studio", f"{state['url']}/studio"),
                ("pid", state["pid"]),
                ("version", state.get("version")),
                ("uptime", f"{uptime // 3600}h{uptime // 60 % 60:02d}m{uptime % 60:02d}s"),
                ("home", state.get("home")),
                ("database", state.get("database")),
                ("object store", state.get("object_store")),
            ]
        )
    )
    return 0 if healthy else 1


def cmd_experiments_list(args: argparse.Namespace) -> int:
    client = _client(args)
    rows = []
    paginator = client.get_paginator("list_experiments")
    for page in paginator.paginate(SortBy=args.sort_by, SortOrder=args.sort_order):
        for item in page["ExperimentSummaries"]:
            rows.append(
                (
                    item["ExperimentName"],
                    item.get("DisplayName"),
                    item.get("CreationTime"),
                    item.get("LastModifiedTime"),
                )
            )
    if not rows:
        print("No experiments.")
        return 0
    print(table(("name", "display name", "created", "modified"), rows))
    return 0


def cmd_experiments_describe(args: argparse.Namespace) -> int:
    client = _client(args)
    from botocore.exceptions import ClientError

    try:
        item = client.describe_experiment(ExperimentName=args.name)
        trials = client.list_trials(ExperimentName=args.name, MaxResults=100)["TrialSummaries"]
    except ClientError as error:
        print(f"error: {error.response['Error']['Message']}", file=sys.stderr)
        return 1
    print(
        fields(
            [
                ("name", item["ExperimentName"]),
                ("arn", item["ExperimentArn"]),
                ("display name", item.get("DisplayName")),
                ("description", item.get("Description")),
                ("created", item.get("CreationTime")),
                ("modified", item.get("LastModifiedTime")),
                ("trials", len(trials)),
            ]
        )
    )
    if trials:
        print()
        print(
            table(("trial", "created"), [(t["TrialName"], t.get("CreationTime")) for t in trials])
        )
    return 0


TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a training job's logs, as CloudWatch serves them; with --follow, until it ends."""
    from botocore.exceptions import ClientError

    logs, sagemaker = _client(args, "logs"), _client(args)
    tokens: dict[str, str | None] = {}  # stream -> the forward token to read on from
    status, warned = None, False
    try:
        while True:
            if args.follow:
                # asked before the logs are read, so none written before the end are missed
                status, reason = _training_status(sagemaker, args.job)
                if status is None and not warned:
                    print(f"note: {reason}; following its logs until Ctrl-C", file=sys.stderr)
                    warned = True
            try:
                for stream in _log_streams(logs, args.job):
                    tokens.setdefault(stream, None)
            except ClientError as error:
                if error.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise
            events: list[tuple[int, str, str]] = []
            for stream, token in tokens.items():
                found, tokens[stream] = _new_events(logs, stream, token)
                events.extend((event["timestamp"], stream, event["message"]) for event in found)
            for _, stream, message in sorted(events, key=lambda item: item[0]):
                print(message if len(tokens) == 1 else f"[{stream}] {message}", flush=True)
            if not args.follow:
                if not tokens:
                    print(f"No logs for training job {args.job}.", file=sys.stderr)
                    return 1
                return 0
            if status in {"Completed", "Failed", "Stopped"}:
                print(f"Training job {args.job} {status.lower()}.", file=sys.stderr)
                return 1 if status == "Failed" else 0
            time.sleep(args.poll)
    except KeyboardInterrupt:
        return 130


def _training_status(client: Any, job: str) -> tuple[str | None, str]:
    """The job's status, or None and why it is not known (not found, not implemented)."""
    from botocore.exceptions import ClientError

    try:
        return client.describe_training_job(TrainingJobName=job)["TrainingJobStatus"], ""
    except ClientError as error:
        why = error.response["Error"]["Message"]
        return None, f"the status of training job {job} is unknown ({why})"


def _log_streams(client: Any, job: str) -> list[str]:
    paginator = client.get_paginator("describe_log_streams")
    pages = paginator.paginate(logGroupName=TRAINING_LOG_GROUP, logStreamNamePrefix=f"{job}/")
    return [stream["logStreamName"] for page in pages for stream in page["logStreams"]]


def _new_events(client: Any, stream: str, token: str | None) -> tuple[list[Any], str | None]:
    """Every event after `token`: CloudWatch signals the end by a forward token that stays put."""
    events: list[Any] = []
    while True:
        position = {"nextToken": token} if token else {}
        page = client.get_log_events(
            logGroupName=TRAINING_LOG_GROUP, logStreamName=stream, startFromHead=True, **position
        )
        events.extend(page["events"])
        if page["nextForwardToken"] == token or not page["events"]:
            return events, page["nextForwardToken"]
        token = page["nextForwardToken"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salvia", description=__doc__)
    parser.add_argument(
        "--home", help="Salvia's home directory (default $SALVIA_HOME or ~/.salvia)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    server = commands.add_parser("server", help="run the platform in the foreground")
    server.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, help=f"port to listen on (default {DEFAULT_PORT})")
    server.add_argument("--home", default=argparse.SUPPRESS, help="home directory")
    server.add_argument("--demo", action="store_true", help="seed a demo experiment once up")
    server.add_argument(
        "--auth-mode",
        choices=("open", "iam"),
        help="'iam' verifies every signature and evaluates policies; 'open' (the default) "
        "accepts any well-formed signature and is allowed only on loopback",
    )
    server.add_argument(
        "--insecure-open-access",
        action="store_true",
        help="DANGEROUS: serve a non-loopback address in open mode, where anyone who can "
        "reach it can do anything",
    )
    server.set_defaults(func=cmd_server)

    status = commands.add_parser("status", help="report what is running")
    status.add_argument("--home", default=argparse.SUPPRESS, help="home directory")
    status.set_defaults(func=cmd_status)

    experiments = commands.add_parser("experiments", help="SageMaker Experiments")
    experiments.add_argument("--endpoint-url", help="the server's URL (default: the running one)")
    actions = experiments.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list experiments")
    listing.add_argument("--sort-by", choices=("CreationTime", "Name"), default="CreationTime")
    listing.add_argument("--sort-order", choices=("Ascending", "Descending"), default="Descending")
    listing.set_defaults(func=cmd_experiments_list)
    describe = actions.add_parser("describe", help="describe one experiment and its trials")
    describe.add_argument("name")
    describe.set_defaults(func=cmd_experiments_describe)

    job_logs = commands.add_parser("logs", help="print a training job's logs")
    job_logs.add_argument("job", help="the training job's name")
    job_logs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    job_logs.add_argument("--poll", type=float, default=2.0, help="seconds between polls")
    job_logs.add_argument("--endpoint-url", help="the server's URL (default: the running one)")
    job_logs.set_defaults(func=cmd_logs)
    add_access_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "endpoint_url"):
        args.endpoint_url = None
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
