"""The cost of authentication: DescribeTrainingJob requests/s against a server in open mode
(signatures parsed, not checked) and one in authenticated mode (SigV4 verified against the
administrator's key, its policies evaluated), measured in the same run.

    .venv/bin/python benchmarks/auth_overhead.py [--seconds 3] [--rounds 5] [--connections 8]

Each server describes a real (finished) training job. The request is signed once by botocore
and sent as the same bytes over raw keep-alive sockets (a read-only request may be repeated
within its five minutes; the server verifies it in full every time), so the client costs
almost nothing. The two servers take turns, in alternating order, for `--rounds` rounds after a
warm-up, so that a change in the machine's other load falls on both: every round's iam/open
ratio is printed, then the median round and the pooled figures (all requests over all seconds).
The load average is printed with them, and each server's CPU time per request (from /proc): the
client and the machine's other work share the cores, so requests/s move with them, while the
server's CPU per request moves much less. Target (issue 10): verification and policy evaluation
cost <= 15%.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.awsrequest import AWSRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import free_port, wait_healthy

JOB = "auth-bench"


@contextmanager
def server(mode: str) -> Iterator[tuple[int, tuple[str, str], int]]:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SALVIA_HOME": home, "SALVIA_LOG_LEVEL": "warning",
               "SALVIA_AUTH_MODE": mode}  # fmt: skip
        env.pop("SALVIA_DATABASE_URL", None)
        port = free_port()
        out = Path(home) / "server.out"
        with out.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "salvia.cli.main", "server", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
            text = out.read_text()
            key = ("bench", "bench")
            if "AWS_ACCESS_KEY_ID=" in text:
                key = (text.split("AWS_ACCESS_KEY_ID=")[1].split()[0],
                       text.split("AWS_SECRET_ACCESS_KEY=")[1].split()[0])  # fmt: skip
            yield port, key, process.pid
        finally:
            process.terminate()
            process.wait(60)


def prepare(port: int, key: tuple[str, str]) -> bytes:
    """A finished job to describe, and the signed request that describes it, as raw bytes."""
    sm = boto3.client("sagemaker", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id=key[0], aws_secret_access_key=key[1])  # fmt: skip
    iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                       aws_access_key_id=key[0], aws_secret_access_key=key[1])  # fmt: skip
    trust = json.dumps({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                        "Principal": {"Service": "sagemaker.amazonaws.com"}}]})  # fmt: skip
    role = iam.create_role(RoleName="bench", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id=key[0], aws_secret_access_key=key[1])  # fmt: skip
    s3.create_bucket(Bucket="bench")
    code = io.BytesIO()
    with tarfile.open(fileobj=code, mode="w:gz") as archive:
        info = tarfile.TarInfo("train.py")
        info.size = len(b"print(1)")
        archive.addfile(info, io.BytesIO(b"print(1)"))
    s3.put_object(Bucket="bench", Key="code/sourcedir.tar.gz", Body=code.getvalue())
    sm.create_training_job(
        TrainingJobName=JOB,
        RoleArn=role,
        AlgorithmSpecification={"TrainingImage": "salvia/python", "TrainingInputMode": "File"},
        HyperParameters={"sagemaker_program": '"train.py"',
                         "sagemaker_submit_directory": '"s3://bench/code/sourcedir.tar.gz"'},
        OutputDataConfig={"S3OutputPath": "s3://bench/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )  # fmt: skip
    while sm.describe_training_job(TrainingJobName=JOB)["TrainingJobStatus"] == "InProgress":
        time.sleep(0.1)
    sent: list[AWSRequest] = []
    sm.meta.events.register("before-send", lambda request, **_: sent.append(request))
    sm.describe_training_job(TrainingJobName=JOB)
    request = sent[-1]
    body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
    lines = ["POST / HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    for name, value in request.headers.items():
        text = value.decode() if isinstance(value, bytes) else value
        if name.lower() not in ("host", "content-length"):
            lines.append(f"{name}: {text}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _connection(port: int, raw: bytes, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def measure(port: int, raw: bytes, seconds: float, connections: int) -> tuple[int, float]:
    """(requests answered, seconds taken) by `connections` clients for `seconds`."""
    counts = [0]
    start = time.perf_counter()
    until = start + seconds
    await asyncio.gather(*(_connection(port, raw, until, counts) for _ in range(connections)))
    return counts[0], time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5, help="open/iam alternations")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a positive count")
    with (
        server("open") as (open_port, open_key, open_pid),
        server("iam") as (
            iam_port,
            iam_key,
            iam_pid,
        ),
    ):
        targets = {"open": (open_port, prepare(open_port, open_key), open_pid),
                   "iam": (iam_port, prepare(iam_port, iam_key), iam_pid)}  # fmt: skip
        for port, raw, _ in targets.values():  # warm-up: caches filled, code paths specialized
            asyncio.run(measure(port, raw, 1.0, args.connections))
        print(f"{args.rounds} rounds of {args.seconds:g} s per mode; at the start: {load()}")
        # per mode and round: (requests, seconds, server CPU seconds)
        runs: dict[str, list[tuple[int, float, float]]] = {"open": [], "iam": []}
        for index in range(args.rounds):
            order = ("open", "iam") if index % 2 == 0 else ("iam", "open")
            for mode in order:
                port, raw, pid = targets[mode]
                before = cpu_seconds(pid)
                count, elapsed = asyncio.run(measure(port, raw, args.seconds, args.connections))
                runs[mode].append((count, elapsed, cpu_seconds(pid) - before))
            (o_n, o_s, o_cpu), (i_n, i_s, i_cpu) = runs["open"][-1], runs["iam"][-1]
            print(f"  round {index + 1:2d}: open {o_n / o_s:6.0f}/s "
                  f"({o_cpu / o_n * 1e6:5.1f} us CPU)  iam {i_n / i_s:6.0f}/s "
                  f"({i_cpu / i_n * 1e6:5.1f} us CPU)  iam/open {i_n / i_s / (o_n / o_s):.3f}",
                  flush=True)  # fmt: skip
        print(f"at the end: {load()}")
    rates = {mode: [n / seconds for n, seconds, _ in done] for mode, done in runs.items()}
    pooled = {
        mode: sum(r[0] for r in done) / sum(r[1] for r in done) for mode, done in runs.items()
    }
    cpu = {
        mode: sum(r[2] for r in done) / sum(r[0] for r in done) * 1e6 for mode, done in runs.items()
    }
    costs = [1 - i / o for o, i in zip(rates["open"], rates["iam"], strict=True)]
    for mode, label in (
        ("open", "open mode (no verification)"),
        ("iam", "iam mode (SigV4 + policies)"),
    ):
        median = statistics.median(rates[mode])
        print(f"DescribeTrainingJob, {label}: {median:7.0f} requests/s median round, "
              f"{pooled[mode]:7.0f} pooled; server CPU {cpu[mode]:5.1f} us/request")  # fmt: skip
    pooled_cost = 1 - pooled["iam"] / pooled["open"]
    print(f"cost of verification and policy evaluation: {statistics.median(costs):.1%} median "
          f"round, {pooled_cost:.1%} pooled (target <= 15%); server CPU "
          f"+{cpu['iam'] - cpu['open']:.1f} us/request, {1 - cpu['open'] / cpu['iam']:.1%} of "
          "iam mode's")  # fmt: skip


if __name__ == "__main__":
    main()
