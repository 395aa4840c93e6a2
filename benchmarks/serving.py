"""Serving: single-row CSV predictions of one XGBoost model at 1 and 8 concurrent clients,
in one run, through

  (a) `predict` in-process (parse the CSV row, DMatrix, Booster.predict),
  (b) Salvia's model server called directly (the very instance behind the endpoint),
  (c) `InvokeEndpoint` through Salvia's gateway (SigV4-signed, as boto3 sends it),
  (d) MLflow's `mlflow models serve` of the same booster (`--env-manager local`).

    .venv/bin/python benchmarks/serving.py [--seconds 3] [--rounds 3] [--no-mlflow]

Targets (issue 5): gateway p50 overhead over (b) <= 1 ms; (c) throughput at 8 clients >= 0.8 x
(b); (c) >= 5 x (d). The load generator is one asyncio process with a keep-alive connection per
client; it shares the machine's cores with the servers, equally for every target. With
`--rounds N`, (b) and (c) alternate N times at each client count, so that a change in the
machine's other load falls on both; each figure pools its rounds and the (c)/(b) ratio of every
round is printed.
MLflow needs the `bench` extra (`pip install -e '.[bench]'`, which `make bench` does).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import Salvia, free_port, running_salvia, wait_healthy

XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
CLIENTS = (1, 8)


@dataclass
class Result:
    label: str
    clients: int
    latencies: list[float]  # seconds
    elapsed: float
    errors: int

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        return (
            f"{self.label:<34} {self.clients:>7} {self.throughput:>10,.0f} "
            f"{self.percentile(0.5):>8.2f} {self.percentile(0.99):>8.2f} {self.errors:>6}"
        )


# ------------------------------------------------------------------------------ load generator


async def _client(
    port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if head[9:12] != b"200":
                errors.append(1)
    finally:
        writer.close()


async def _drive(port: int, request: bytes, clients: int, seconds: float) -> Result:
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(_client(port, request, stop_at, latencies, errors) for _ in range(clients))
    )
    return Result("", clients, latencies, time.perf_counter() - started, len(errors))


def drive(label: str, port: int, request: bytes, clients: int, seconds: float) -> Result:
    asyncio.run(_drive(port, request, clients, min(seconds, 0.5)))  # warm-up
    result = asyncio.run(_drive(port, request, clients, seconds))
    result.label = label
    print(result.row(), flush=True)
    return result


def pooled(rounds: list[Result]) -> Result:
    """One figure for several rounds of the same target: all their requests over all their
    time."""
    first = rounds[0]
    latencies = [latency for result in rounds for latency in result.latencies]
    elapsed = sum(result.elapsed for result in rounds)
    errors = sum(result.errors for result in rounds)
    return Result(first.label, first.clients, latencies, elapsed, errors)


def http_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ------------------------------------------------------------------------------------- targets


def train(directory: Path) -> tuple[object, bytes]:
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6}, xgb.DMatrix(x, label=y), 100
    )
    booster.save_model(str(directory / "xgboost-model"))
    row = ",".join(f"{v:g}" for v in x[0]).encode()
    return booster, row


def in_process(booster: object, row: bytes, seconds: float) -> Result:
    import xgboost as xgb

    booster.set_param("nthread", 1)  # type: ignore[attr-defined]
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        began = time.perf_counter()
        values = np.array([[float(v) for v in row.split(b",")]])
        booster.predict(xgb.DMatrix(values))  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - began)
    result = Result("(a) predict in-process", 1, latencies, time.perf_counter() - started, 0)
    print(result.row(), flush=True)
    return result


def deploy(salvia: Salvia, model_dir: Path) -> str:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir / "xgboost-model", arcname="xgboost-model")
    sm, s3 = salvia.client("sagemaker"), salvia.client("s3")
    s3.create_bucket(Bucket="bench")
    s3.put_object(Bucket="bench", Key="model.tar.gz", Body=buffer.getvalue())
    sm.create_model(
        ModelName="bench",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
        PrimaryContainer={"Image": XGBOOST_IMAGE, "ModelDataUrl": "s3://bench/model.tar.gz"},
    )
    sm.create_endpoint_config(
        EndpointConfigName="bench",
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": "bench", "InitialInstanceCount": 1,
             "InstanceType": "ml.c5.large"}
        ],
    )  # fmt: skip
    sm.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName="bench", WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    return "bench"


def instance_port(home: Path) -> int:
    """The port of the endpoint's model-server instance, read from its command line."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"salvia.serving.model_server" in argv and any(str(home).encode() in a for a in argv):
            return int(argv[argv.index(b"--port") + 1])
    raise RuntimeError("the endpoint's model server was not found (this needs Linux /proc)")


def signed_invocation(salvia: Salvia, port: int, row: bytes) -> bytes:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = f"http://127.0.0.1:{port}/endpoints/bench/invocations"
    headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
    request = AWSRequest(method="POST", url=url, data=row, headers=headers)
    SigV4Auth(Credentials("bench", "bench"), "sagemaker", "us-east-1").add_auth(request)
    signed = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    return http_request(port, "/endpoints/bench/invocations", row, signed)


def mlflow_server(booster: object, scratch: Path, row: bytes) -> tuple[subprocess.Popen, int]:
    import mlflow.xgboost

    path = scratch / "mlflow-model"
    mlflow.xgboost.save_model(booster, str(path))
    port = free_port()
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "2",
        "MLFLOW_TRACKING_URI": f"file://{scratch}/mlruns",
        # mlflow execs `uvicorn` by name
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    process = subprocess.Popen(
        [mlflow, "models", "serve", "-m", str(path), "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_healthy(f"http://127.0.0.1:{port}/ping", process)
    return process, port


# ---------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1, help="(b)/(c) alternations per count")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a positive count")
    results: dict[tuple[str, int], Result] = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        booster, row = train(scratch)
        header = (
            f"{'target':<34} {'clients':>7} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        )
        print(header)
        results[("a", 1)] = in_process(booster, row, args.seconds)
        with running_salvia() as salvia:
            deploy(salvia, scratch)
            direct_port = instance_port(salvia.home)
            gateway_port = int(salvia.url.rsplit(":", 1)[1])
            direct = http_request(
                direct_port, "/invocations", row, {"Content-Type": "text/csv", "Accept": "text/csv"}
            )
            gateway = signed_invocation(salvia, gateway_port, row)
            try:
                for clients in CLIENTS:
                    rounds: dict[str, list[Result]] = {"b": [], "c": []}
                    for _ in range(args.rounds):
                        rounds["b"].append(drive(
                            "(b) Salvia model server, direct", direct_port, direct, clients,
                            args.seconds,
                        ))  # fmt: skip
                        rounds["c"].append(drive(
                            "(c) InvokeEndpoint via the gateway", gateway_port, gateway, clients,
                            args.seconds,
                        ))  # fmt: skip
                    results[("b", clients)] = pooled(rounds["b"])
                    results[("c", clients)] = pooled(rounds["c"])
                    if args.rounds > 1:
                        ratios = " ".join(
                            f"{c.throughput / b.throughput:.2f}"
                            for b, c in zip(rounds["b"], rounds["c"], strict=True)
                        )
                        print(f"  (c)/(b) by round at {clients} clients: {ratios}", flush=True)
            finally:  # instances outlive the server by design: stop them first
                sm = salvia.client("sagemaker")
                sm.delete_endpoint(EndpointName="bench")
                sm.get_waiter("endpoint_deleted").wait(
                    EndpointName="bench", WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
                )
        if not args.no_mlflow:
            process, port = mlflow_server(booster, scratch, row)
            header_row = ",".join(f"f{i}" for i in range(row.count(b",") + 1)).encode()
            mlflow_request = http_request(
                port, "/invocations", header_row + b"\n" + row, {"Content-Type": "text/csv"}
            )
            try:
                for clients in CLIENTS:
                    results[("d", clients)] = drive(
                        "(d) mlflow models serve", port, mlflow_request, clients, args.seconds
                    )
            finally:
                process.terminate()
                process.wait(30)

    b1, c1, b8, c8 = results[("b", 1)], results[("c", 1)], results[("b", 8)], results[("c", 8)]
    overhead = c1.percentile(0.5) - b1.percentile(0.5)
    print()
    if args.rounds > 1:
        print(f"pooled over {args.rounds} rounds:")
        for key in (("b", 1), ("c", 1), ("b", 8), ("c", 8)):
            print(results[key].row())
    print(f"gateway p50 overhead over (b), 1 client: {overhead:.2f} ms (target <= 1 ms)")
    print(f"(c)/(b) throughput at 8 clients: {c8.throughput / b8.throughput:.2f} (target >= 0.8)")
    if ("d", 8) in results:
        d8 = results[("d", 8)]
        print(f"(c)/(d) throughput at 8 clients: {c8.throughput / d8.throughput:.1f} (target >= 5)")
    if any(r.errors for r in results.values()):
        print("some requests failed: the figures above are not valid")
        sys.exit(1)


if __name__ == "__main__":
    main()
