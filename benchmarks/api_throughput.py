"""DescribeExperiment throughput and p99 latency over keep-alive HTTP, against a bare Starlette
handler measured in the same run on the same machine.

    .venv/bin/python benchmarks/api_throughput.py [--seconds 10] [--connections 16]

Both servers run as one uvicorn process each (uvloop + httptools when installed, as Salvia
uses them), pinned to one core; the load comes from this process, pinned to the other, over raw
keep-alive sockets so that the client costs as little as possible. The two servers are measured
in alternating rounds and each figure is the median round, so a burst of noise on the machine
does not decide the ratio. Target (issue 2): >= 1,000 requests/s and >= 35% of the bare rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
BODY = b'{"ExperimentName": "bench-experiment"}'
HEADERS = (
    "POST / HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\n"
    "X-Amz-Target: SageMaker.DescribeExperiment\r\n"
    "Content-Type: application/x-amz-json-1.1\r\n"
    "X-Amz-Date: 20261123T000000Z\r\n"
    "Authorization: AWS4-HMAC-SHA256 Credential=bench/20261123/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64 + "\r\n"
    "Content-Length: {length}\r\n\r\n"
)


def bare_app() -> object:
    """The baseline: the least a Starlette handler can do for the same request and answer."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = (
        b'{"ExperimentName":"bench-experiment","ExperimentArn":"arn:aws:sagemaker:us-east-1:'
        b'123456789012:experiment/bench-experiment","DisplayName":"bench-experiment",'
        b'"CreationTime":1795464000.0,"LastModifiedTime":1795464000.0}'
    )

    async def describe(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/x-amz-json-1.1")

    async def health(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/", describe, methods=["POST"]), Route("/healthz", health)])


async def _connection(port: int, deadline: float, latencies: list[float]) -> None:
    request = (HEADERS.format(port=port, length=len(BODY))).encode() + BODY
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status != b"200":
                raise RuntimeError(f"unexpected status {status!r}")
            latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(port: int, seconds: float, connections: int) -> tuple[float, list[float]]:
    # a short warm-up first, so that neither side is measured cold
    await asyncio.gather(*(_connection(port, time.perf_counter() + 1, []) for _ in range(4)))
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_connection(port, deadline, latencies) for _ in range(connections)))
    return len(latencies) / (time.perf_counter() - started), latencies


def measure(port: int, seconds: float, connections: int) -> tuple[float, float, float]:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    rate, latencies = runner(_load(port, seconds, connections))
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return rate, statistics.median(latencies) * 1000, p99


SERVER_CPU, CLIENT_CPU = 0, 1


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, preexec_fn=lambda: _pin(SERVER_CPU)
    )
    wait_healthy(f"http://127.0.0.1:{port}/healthz", process)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15, help="measured time per server")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        import uvicorn

        uvicorn.run(bare_app(), host="127.0.0.1", port=args.serve_bare, log_level="warning")  # type: ignore[arg-type]
        return

    rounds: dict[str, list[tuple[float, float, float]]] = {"salvia": [], "bare": []}
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SALVIA_HOME": home, "SALVIA_LOG_LEVEL": "warning"}
        env.pop("SALVIA_DATABASE_URL", None)
        salvia_port, bare_port = free_port(), free_port()
        command = [sys.executable, "-m", "salvia.cli.main", "server", "--port", str(salvia_port)]
        salvia = start(command, salvia_port, env)
        bare = start([sys.executable, __file__, "--serve-bare", str(bare_port)], bare_port, env)
        try:
            client = boto3.client(
                "sagemaker",
                endpoint_url=f"http://127.0.0.1:{salvia_port}",
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            client.create_experiment(ExperimentName="bench-experiment")
            _pin(CLIENT_CPU)
            seconds = args.seconds / args.rounds
            for _ in range(args.rounds):
                rounds["salvia"].append(measure(salvia_port, seconds, args.connections))
                rounds["bare"].append(measure(bare_port, seconds, args.connections))
        finally:
            for process in (salvia, bare):
                process.terminate()
                process.wait(30)

    results = {
        "salvia DescribeExperiment": sorted(rounds["salvia"])[len(rounds["salvia"]) // 2],
        "bare Starlette handler": sorted(rounds["bare"])[len(rounds["bare"]) // 2],
    }
    print(f"{'server':28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (rate, p50, p99) in results.items():
        print(f"{name:28} {rate:9.0f} {p50:8.2f} {p99:8.2f}")
    ratio = results["salvia DescribeExperiment"][0] / results["bare Starlette handler"][0]
    print(f"ratio salvia/bare: {ratio:.2f} (target >= 0.35; salvia target >= 1000 req/s)")


if __name__ == "__main__":
    main()
