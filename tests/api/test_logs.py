"""CloudWatch Logs over the job log files, as boto3, the SageMaker SDK's log tailer and
`salvia logs` read them.

The files are written the way the training launcher writes them (`salvia.logfile.append`), straight
into the server's home; everything is read back through the API.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from salvia import logfile
from tests.conftest import SalviaServer, unique

TRAINING = "/aws/sagemaker/TrainingJobs"
BASE = 1_700_000_000_000  # epoch milliseconds


def write(server: SalviaServer, group: str, stream: str, *events: tuple[int, str]) -> None:
    path = logfile.stream_path(server.home / "logs", group, stream)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as out:
        for timestamp, message in events:
            logfile.append(out, message, timestamp)


def numbered(count: int, first: int = 0) -> list[tuple[int, str]]:
    return [(BASE + i, f"line {i}") for i in range(first, first + count)]


def error_of(raised: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    response: Any = raised.value.response
    error = response["Error"]
    return error["Code"], error["Message"], response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def logs(server: SalviaServer) -> Any:
    return server.client("logs")


def test_describe_log_streams_by_job_prefix_and_order(server: SalviaServer, logs: Any) -> None:
    job = unique("job")
    write(server, TRAINING, f"{job}/algo-2-1700000000", (BASE + 5, "two"))
    write(server, TRAINING, f"{job}/algo-1-1700000000", (BASE + 1, "one"), (BASE + 9, "one again"))
    write(server, TRAINING, f"{job}x/algo-1-1700000000", (BASE, "another job, same prefix"))

    found = logs.describe_log_streams(
        logGroupName=TRAINING, logStreamNamePrefix=f"{job}/", orderBy="LogStreamName"
    )["logStreams"]
    assert [s["logStreamName"] for s in found] == [
        f"{job}/algo-1-1700000000",
        f"{job}/algo-2-1700000000",
    ]
    first = found[0]
    assert first["firstEventTimestamp"] == BASE + 1 and first["lastEventTimestamp"] == BASE + 9
    assert first["creationTime"] == BASE + 1 and first["storedBytes"] == 0
    assert first["lastIngestionTime"] > 0
    assert first["arn"] == (
        f"arn:aws:logs:us-east-1:123456789012:log-group:{TRAINING}:log-stream:{first['logStreamName']}"
    )

    backwards = logs.describe_log_streams(
        logGroupName=TRAINING, logStreamNamePrefix=f"{job}/", descending=True
    )["logStreams"]
    assert [s["logStreamName"] for s in backwards] == [
        f"{job}/algo-2-1700000000",
        first["logStreamName"],
    ]

    # a page that ends exactly at the last stream carries no token (the SageMaker SDK loops on it)
    page = logs.describe_log_streams(logGroupName=TRAINING, logStreamNamePrefix=f"{job}/", limit=2)
    assert "nextToken" not in page
    page = logs.describe_log_streams(logGroupName=TRAINING, logStreamNamePrefix=f"{job}/", limit=1)
    rest = logs.describe_log_streams(
        logGroupName=TRAINING, logStreamNamePrefix=f"{job}/", limit=1, nextToken=page["nextToken"]
    )
    assert [s["logStreamName"] for s in page["logStreams"] + rest["logStreams"]] == [
        s["logStreamName"] for s in found
    ]
    assert "nextToken" not in rest
    with pytest.raises(ClientError) as raised:  # a token only pages the query that issued it
        logs.describe_log_streams(logGroupName=TRAINING, nextToken=page["nextToken"])
    assert error_of(raised)[:2] == (
        "InvalidParameterException",
        "The specified nextToken is invalid.",
    )

    with pytest.raises(ClientError) as raised:
        logs.describe_log_streams(
            logGroupName=TRAINING, logStreamNamePrefix=f"{job}/", orderBy="LastEventTime"
        )
    assert error_of(raised)[0] == "InvalidParameterException"


def test_describe_log_streams_by_last_event_time(server: SalviaServer, logs: Any) -> None:
    group = f"/salvia/tests/{unique('group')}"  # not SageMaker's: streams are the files in it
    write(server, group, "early", (BASE + 1, "a"))
    write(server, group, "late", (BASE + 3, "b"))
    write(server, group, "middle", (BASE + 2, "c"))
    latest_first = logs.describe_log_streams(
        logGroupName=group, orderBy="LastEventTime", descending=True
    )["logStreams"]
    assert [s["logStreamName"] for s in latest_first] == ["late", "middle", "early"]
    paged, token = [], None
    while True:
        extra = {"nextToken": token} if token else {}
        page = logs.describe_log_streams(
            logGroupName=group, orderBy="LastEventTime", limit=1, **extra
        )
        paged += [s["logStreamName"] for s in page["logStreams"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert paged == ["early", "middle", "late"]


def test_describe_log_groups(server: SalviaServer, logs: Any) -> None:
    root = f"/salvia/groups-{unique()}"
    for name in ("b", "a", "c"):
        write(server, f"{root}/{name}", "stream", (BASE, name))
    groups = logs.describe_log_groups(logGroupNamePrefix=root)["logGroups"]
    assert [g["logGroupName"] for g in groups] == [f"{root}/a", f"{root}/b", f"{root}/c"]
    assert groups[0]["arn"].endswith(f":log-group:{root}/a:*")
    assert groups[0]["logGroupArn"].endswith(f":log-group:{root}/a")
    assert groups[0]["creationTime"] == BASE

    first = logs.describe_log_groups(logGroupNamePrefix=root, limit=2)
    rest = logs.describe_log_groups(logGroupNamePrefix=root, limit=2, nextToken=first["nextToken"])
    assert [g["logGroupName"] for g in first["logGroups"] + rest["logGroups"]] == [
        g["logGroupName"] for g in groups
    ]
    assert "nextToken" not in rest

    write(server, TRAINING, f"{unique('job')}/algo-1-1700000000", (BASE, "x"))
    sagemaker = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/")["logGroups"]
    assert TRAINING in [g["logGroupName"] for g in sagemaker]


def test_get_log_events_pages_forward_until_the_token_stays_put(
    server: SalviaServer, logs: Any
) -> None:
    stream = f"{unique('job')}/algo-1-1700000000"
    write(server, TRAINING, stream, *numbered(5))
    where = {"logGroupName": TRAINING, "logStreamName": stream}

    first = logs.get_log_events(**where, startFromHead=True, limit=2)
    assert [e["message"] for e in first["events"]] == ["line 0", "line 1"]
    assert first["events"][0] == {"timestamp": BASE, "message": "line 0", "ingestionTime": BASE}
    assert first["nextForwardToken"].startswith("f/")
    assert first["nextBackwardToken"].startswith("b/")

    second = logs.get_log_events(**where, limit=2, nextToken=first["nextForwardToken"])
    third = logs.get_log_events(**where, limit=2, nextToken=second["nextForwardToken"])
    assert [e["message"] for e in second["events"] + third["events"]] == [
        "line 2",
        "line 3",
        "line 4",
    ]
    at_end = logs.get_log_events(**where, nextToken=third["nextForwardToken"])
    assert at_end["events"] == [] and at_end["nextForwardToken"] == third["nextForwardToken"]

    write(server, TRAINING, stream, *numbered(2, first=5))
    more = logs.get_log_events(**where, nextToken=at_end["nextForwardToken"])
    assert [e["message"] for e in more["events"]] == ["line 5", "line 6"]
    assert more["nextForwardToken"] != at_end["nextForwardToken"]

    # and back again from the first page
    before = logs.get_log_events(**where, nextToken=second["nextBackwardToken"])
    assert [e["message"] for e in before["events"]] == ["line 0", "line 1"]


def test_get_log_events_tails_by_default_and_pages_backward(
    server: SalviaServer, logs: Any
) -> None:
    stream = f"{unique('job')}/algo-1-1700000000"
    write(server, TRAINING, stream, *numbered(7))
    where = {"logGroupName": TRAINING, "logStreamName": stream}

    tail = logs.get_log_events(**where, limit=3)
    assert [e["message"] for e in tail["events"]] == ["line 4", "line 5", "line 6"]
    assert logs.get_log_events(**where, nextToken=tail["nextForwardToken"])["events"] == []

    seen, token = [], tail["nextBackwardToken"]
    while True:
        page = logs.get_log_events(**where, limit=3, nextToken=token)
        if page["nextBackwardToken"] == token:
            assert page["events"] == []
            break
        seen = [e["message"] for e in page["events"]] + seen
        token = page["nextBackwardToken"]
    assert seen == [f"line {i}" for i in range(4)]


def test_get_log_events_time_range_and_limit(server: SalviaServer, logs: Any) -> None:
    stream = f"{unique('job')}/algo-1-1700000000"
    write(server, TRAINING, stream, *numbered(10))
    where = {"logGroupName": TRAINING, "logStreamName": stream, "startFromHead": True}

    ranged = logs.get_log_events(**where, startTime=BASE + 2, endTime=BASE + 5)["events"]
    assert [e["timestamp"] for e in ranged] == [BASE + 2, BASE + 3, BASE + 4]  # end excluded
    assert len(logs.get_log_events(**where, limit=4)["events"]) == 4
    assert len(logs.get_log_events(**where)["events"]) == 10
    assert logs.get_log_events(**where, startTime=BASE + 100)["events"] == []

    with pytest.raises(ClientError) as raised:
        logs.get_log_events(**where, nextToken="not-a-token")
    assert error_of(raised)[:1] == ("InvalidParameterException",)
    with pytest.raises(ClientError) as raised:
        logs.get_log_events(**where, limit=0)
    assert error_of(raised)[2] == 400


def test_a_partly_written_line_waits_for_its_end(server: SalviaServer, logs: Any) -> None:
    stream = f"{unique('job')}/algo-1-1700000000"
    write(server, TRAINING, stream, (BASE, "whole"))
    path = logfile.stream_path(server.home / "logs", TRAINING, stream)
    with path.open("ab") as out:
        out.write(b'{"timestamp": 1700000000001, "mess')
    where = {"logGroupName": TRAINING, "logStreamName": stream}
    page = logs.get_log_events(**where, startFromHead=True)
    assert [e["message"] for e in page["events"]] == ["whole"]
    with path.open("ab") as out:
        out.write(b'age": "finished"}\n')
    later = logs.get_log_events(**where, nextToken=page["nextForwardToken"])
    assert [e["message"] for e in later["events"]] == ["finished"]


def test_missing_group_and_stream(server: SalviaServer, logs: Any) -> None:
    with pytest.raises(ClientError) as raised:
        logs.describe_log_streams(logGroupName=f"/aws/sagemaker/{unique('Nothing')}")
    assert error_of(raised) == (
        "ResourceNotFoundException",
        "The specified log group does not exist.",
        400,
    )
    with pytest.raises(ClientError) as raised:
        logs.get_log_events(logGroupName="/no/such/group", logStreamName="s")
    assert error_of(raised)[:2] == (
        "ResourceNotFoundException",
        "The specified log group does not exist.",
    )
    write(server, TRAINING, f"{unique('job')}/algo-1-1700000000", (BASE, "x"))
    for stream in (f"{unique('job')}/algo-1-1700000000", "../../../../etc/passwd"):
        with pytest.raises(ClientError) as raised:
            logs.get_log_events(logGroupName=TRAINING, logStreamName=stream)
        assert error_of(raised) == (
            "ResourceNotFoundException",
            "The specified log stream does not exist.",
            400,
        )
    with pytest.raises(ClientError) as raised:
        logs.filter_log_events(logGroupName="/no/such/group")
    assert error_of(raised)[0] == "ResourceNotFoundException"


def test_filter_log_events(server: SalviaServer, logs: Any) -> None:
    job = unique("job")
    one, two = f"{job}/algo-1-1700000000", f"{job}/algo-2-1700000000"
    write(server, TRAINING, one, (BASE + 1, "epoch 1 loss=0.5"), (BASE + 4, "ERROR disk full"))
    write(server, TRAINING, two, (BASE + 2, "epoch 1 loss=0.7"), (BASE + 3, "WARN slow epoch"))
    write(server, TRAINING, f"{job}x/algo-1-1700000000", (BASE, "epoch 1 elsewhere"))
    group = {"logGroupName": TRAINING}

    def messages(**request: Any) -> list[str]:
        return [e["message"] for e in logs.filter_log_events(**group, **request)["events"]]

    everything = logs.filter_log_events(**group, logStreamNamePrefix=f"{job}/")
    assert [(e["logStreamName"], e["timestamp"]) for e in everything["events"]] == [
        (one, BASE + 1),
        (two, BASE + 2),
        (two, BASE + 3),
        (one, BASE + 4),
    ]  # interleaved by time
    assert len({e["eventId"] for e in everything["events"]}) == 4
    assert {s["logStreamName"] for s in everything["searchedLogStreams"]} == {one, two}

    assert messages(logStreamNamePrefix=f"{job}/", filterPattern="epoch loss") == [
        "epoch 1 loss=0.5",
        "epoch 1 loss=0.7",
    ]
    assert messages(logStreamNames=[one], filterPattern='"loss=0.5"') == ["epoch 1 loss=0.5"]
    assert messages(logStreamNamePrefix=f"{job}/", filterPattern="epoch -loss") == [
        "WARN slow epoch"
    ]
    assert messages(logStreamNamePrefix=f"{job}/", filterPattern="?ERROR ?WARN") == [
        "WARN slow epoch",
        "ERROR disk full",
    ]
    assert messages(logStreamNamePrefix=f"{job}/", filterPattern='"disk FULL"') == []
    assert messages(logStreamNames=[two], startTime=BASE + 3, endTime=BASE + 10) == [
        "WARN slow epoch"
    ]
    assert messages(logStreamNames=[f"{job}/algo-9-1700000000"]) == []

    pages, token = [], None
    while True:
        extra = {"nextToken": token} if token else {}
        page = logs.filter_log_events(**group, logStreamNamePrefix=f"{job}/", limit=3, **extra)
        pages.append([e["timestamp"] for e in page["events"]])
        token = page.get("nextToken")
        if token is None:
            break
    assert pages == [[BASE + 1, BASE + 2, BASE + 3], [BASE + 4]]

    with pytest.raises(ClientError) as raised:
        logs.filter_log_events(**group, filterPattern='{ $.level = "ERROR" }')
    code, message, status = error_of(raised)
    assert (code, status) == ("InvalidParameterException", 400)
    assert "JSON pattern" in message and "not support" in message
    with pytest.raises(ClientError) as raised:
        logs.filter_log_events(**group, logStreamNames=[one], logStreamNamePrefix=job)
    assert error_of(raised)[0] == "InvalidParameterException"


def test_other_logs_operations_are_not_implemented(logs: Any) -> None:
    with pytest.raises(ClientError) as raised:
        logs.put_log_events(logGroupName="g", logStreamName="s", logEvents=[])
    code, message, status = error_of(raised)
    assert (code, status) == ("NotImplementedException", 501) and "PutLogEvents" in message


# --- the SageMaker SDK's own log tailer -------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SDK v2 warns that v3 exists
def test_sagemaker_sdk_log_tailer(
    server: SalviaServer, logs: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    pytest.importorskip("sagemaker")
    from sagemaker.logs import ColorWrap
    from sagemaker.session import _flush_log_streams

    capsys.readouterr()  # the SDK's notes on its config files, printed once on import

    job = unique("job")
    one, two = f"{job}/algo-1-1700000000", f"{job}/algo-2-1700000000"

    positions: dict[str, Any] = {}

    def flush(group: str = TRAINING) -> str:
        # what Session.logs_for_job does on every poll of a training job with two instances
        _flush_log_streams([], 2, logs, group, job, positions, False, ColorWrap())
        return str(capsys.readouterr().out)

    # no log group yet: the SDK swallows the ResourceNotFoundException and prints a dot
    assert flush(f"/aws/sagemaker/{unique('NotYetJobs')}") == "."

    write(server, TRAINING, one, (BASE + 1, "1: start"), (BASE + 3, "1: same ms a"))
    write(server, TRAINING, two, (BASE + 2, "2: start"))
    write(server, TRAINING, one, (BASE + 3, "1: same ms b"))
    assert flush().splitlines() == ["1: start", "2: start", "1: same ms a", "1: same ms b"]
    assert flush() == ""  # nothing new: nothing printed twice

    write(server, TRAINING, one, (BASE + 3, "1: same ms c"), (BASE + 7, "1: done"))
    write(server, TRAINING, two, (BASE + 6, "2: done"))
    assert flush().splitlines() == ["1: same ms c", "2: done", "1: done"]
    assert flush() == ""


# --- `salvia logs` ------------------------------------------------------------------------------


def salvia(server: SalviaServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "salvia.cli.main", *args, "--endpoint-url", server.url],
        env={**os.environ, "SALVIA_HOME": str(server.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_salvia_logs_prints_a_jobs_streams(server: SalviaServer) -> None:
    job = unique("job")
    write(server, TRAINING, f"{job}/algo-1-1700000000", (BASE + 1, "hello"), (BASE + 3, "bye"))
    single = salvia(server, "logs", job)
    assert single.returncode == 0, single.stderr
    assert single.stdout.splitlines() == ["hello", "bye"]

    write(server, TRAINING, f"{job}/algo-2-1700000000", (BASE + 2, "from two"))
    both = salvia(server, "logs", job)
    assert both.stdout.splitlines() == [
        f"[{job}/algo-1-1700000000] hello",
        f"[{job}/algo-2-1700000000] from two",
        f"[{job}/algo-1-1700000000] bye",
    ]

    missing = salvia(server, "logs", unique("nothing"))
    assert missing.returncode == 1 and "No logs for training job" in missing.stderr


def test_salvia_logs_follow_an_unknown_job_until_interrupted(server: SalviaServer) -> None:
    """With no status to go by (no such job), --follow keeps printing new events until Ctrl-C."""
    job = unique("job")
    stream = f"{job}/algo-1-1700000000"
    write(server, TRAINING, stream, (BASE, "first"))
    process = subprocess.Popen(
        [sys.executable, "-m", "salvia.cli.main", "logs", job, "--follow", "--poll", "0.1"],
        env={**os.environ, "SALVIA_ENDPOINT_URL": server.url, "SALVIA_HOME": str(server.home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as a terminal would run it: a suite started in the background (`cmd &`) ignores
        # SIGINT, and an ignored signal would be inherited, so Ctrl-C could not be simulated
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None and process.stderr is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout])
    reader.start()
    try:
        assert lines.get(timeout=30) == "first\n"
        write(server, TRAINING, stream, (BASE + 1, "second"))
        assert lines.get(timeout=30) == "second\n"
        time.sleep(0.3)  # a few more polls: nothing is printed twice
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
    assert lines.empty()
    assert "following its logs until Ctrl-C" in process.stderr.read()
    process.stderr.close()
    process.stdout.close()
