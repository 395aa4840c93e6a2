"""Batch transform throughput: rows/s of a transform job over a 1M-row CSV beside the same
XGBoost model's in-process `predict` on the same data and cores, in the same run; then the
serverless cold-start median and the asynchronous request-to-output median.

    .venv/bin/python benchmarks/batch_transform.py [--rows 1000000] [--rounds 3] [--runs 5]

Salvia's figures are the job on its instances (TransformStartTime -> TransformEndTime: reading
the object, cutting it into MultiRecord payloads, the model server parsing and predicting,
writing the `.out` object) and the whole job including the instances' start-up
(CreateTransformJob -> TransformEndTime). The in-process figure reads the same CSV with pandas,
builds the DMatrix and predicts with every core. Each round times both, one after the other; the
ratio is of the medians. Target (issue 6): >= 0.8 x in-process.
Serverless: a scikit-learn model's invocation that finds no instance (cold start), from the
call to the answer; target < 2 s. Async: InvokeEndpointAsync until the output object exists.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import Salvia, running_salvia

XGBOOST_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
FEATURES = 10


def make_data(rows: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    with path.open("w") as out:
        for start in range(0, rows, 100_000):
            block = rng.normal(size=(min(100_000, rows - start), FEATURES))
            np.savetxt(out, block, delimiter=",", fmt="%.5f")


def train(directory: Path) -> object:
    import xgboost as xgb

    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, FEATURES))
    y = (x[:, 0] - x[:, 1] + 0.5 * x[:, 2] > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6}, xgb.DMatrix(x, label=y), 100
    )
    booster.save_model(str(directory / "xgboost-model"))
    return booster


def in_process(booster: object, path: Path) -> float:
    import pandas as pd
    import xgboost as xgb

    started = time.perf_counter()
    frame = pd.read_csv(path, header=None, dtype=np.float64)
    booster.predict(xgb.DMatrix(frame.to_numpy()))  # type: ignore[attr-defined]
    return time.perf_counter() - started


def upload_model(salvia: Salvia, model_dir: Path, data: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir / "xgboost-model", arcname="xgboost-model")
    sm, s3 = salvia.client("sagemaker"), salvia.client("s3")
    s3.create_bucket(Bucket="bench")
    s3.put_object(Bucket="bench", Key="model.tar.gz", Body=buffer.getvalue())
    s3.upload_file(str(data), "bench", "input/data.csv")
    sm.create_model(
        ModelName="bench",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
        PrimaryContainer={"Image": XGBOOST_IMAGE, "ModelDataUrl": "s3://bench/model.tar.gz"},
    )


def transform(salvia: Salvia, name: str) -> tuple[float, float]:
    """(whole job: CreateTransformJob -> TransformEndTime, on the instances: TransformStartTime
    -> TransformEndTime). Polled as a client would, twice a second: the server's own times are
    what counts, and a tighter loop would take CPU from the job."""
    sm = salvia.client("sagemaker")
    created = time.time()
    sm.create_transform_job(
        TransformJobName=name,
        ModelName="bench",
        BatchStrategy="MultiRecord",
        MaxPayloadInMB=6,
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": "s3://bench/input/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://bench/{name}", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )  # fmt: skip
    while True:
        job = sm.describe_transform_job(TransformJobName=name)
        if job["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.5)
    if job["TransformJobStatus"] != "Completed":
        raise SystemExit(f"transform job {job['TransformJobStatus']}: {job.get('FailureReason')}")
    whole = job["TransformEndTime"].timestamp() - created
    running = (job["TransformEndTime"] - job["TransformStartTime"]).total_seconds()
    return whole, running


SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::123456789012:role/bench"


def sklearn_model(salvia: Salvia, name: str) -> None:
    import pickle

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    data = pickle.dumps(LogisticRegression(max_iter=500).fit(x, y))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("model.pkl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    s3 = salvia.client("s3")
    s3.put_object(Bucket="bench", Key=f"{name}.tar.gz", Body=buffer.getvalue())
    salvia.client("sagemaker").create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": SKLEARN_IMAGE, "ModelDataUrl": f"s3://bench/{name}.tar.gz"},
    )


def serverless_cold_starts(salvia: Salvia, runs: int) -> list[float]:
    sm, runtime = salvia.client("sagemaker"), salvia.client("sagemaker-runtime")
    sklearn_model(salvia, "sls")
    sm.create_endpoint_config(
        EndpointConfigName="sls",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "sls",
                             "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 4}}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName="sls", EndpointConfigName="sls")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="sls", WaiterConfig={"Delay": 0.1})
    times = []
    for _ in range(runs):
        while sm.describe_endpoint(EndpointName="sls")["ProductionVariants"][0][
            "CurrentInstanceCount"
        ]:
            time.sleep(0.1)  # until the idle instance is gone
        started = time.perf_counter()
        runtime.invoke_endpoint(EndpointName="sls", ContentType="text/csv", Body="5.1,3.5,1.4,0.2")
        times.append(time.perf_counter() - started)
    sm.delete_endpoint(EndpointName="sls")
    return times


def async_latencies(salvia: Salvia, runs: int) -> list[float]:
    sm, s3 = salvia.client("sagemaker"), salvia.client("s3")
    runtime = salvia.client("sagemaker-runtime")
    sklearn_model(salvia, "async")
    sm.create_endpoint_config(
        EndpointConfigName="async",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "async",
                             "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "s3://bench/async-out/"}},
    )  # fmt: skip
    sm.create_endpoint(EndpointName="async", EndpointConfigName="async")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="async", WaiterConfig={"Delay": 0.1})
    s3.put_object(Bucket="bench", Key="async-in.csv", Body=b"5.1,3.5,1.4,0.2")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = runtime.invoke_endpoint_async(
            EndpointName="async", InputLocation="s3://bench/async-in.csv", ContentType="text/csv"
        )
        key = answer["OutputLocation"].removeprefix("s3://bench/")
        while True:
            try:
                s3.head_object(Bucket="bench", Key=key)
                break
            except s3.exceptions.ClientError:
                time.sleep(0.01)
        times.append(time.perf_counter() - started)
    sm.delete_endpoint(EndpointName="async")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    locals_, jobs, runnings = [], [], []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = scratch / "data.csv"
        make_data(args.rows, data)
        booster = train(scratch)
        size_mb = data.stat().st_size / 1e6
        print(f"{args.rows:,} rows x {FEATURES} features, {size_mb:.0f} MB of CSV")
        with running_salvia(SALVIA_SERVERLESS_IDLE_SECONDS="0.5") as salvia:
            upload_model(salvia, scratch, data)
            for round_ in range(args.rounds):
                locals_.append(in_process(booster, data))
                job, running = transform(salvia, f"bench-{round_}")
                jobs.append(job)
                runnings.append(running)
                print(f"round {round_ + 1}: in-process {locals_[-1]:.2f} s, on the instances "
                      f"{running:.2f} s: ratio {locals_[-1] / running:.2f}")  # fmt: skip
            cold = serverless_cold_starts(salvia, args.runs)
            queued = async_latencies(salvia, args.runs * 4)
            for name in ("sls", "async"):  # instances outlive the server: wait for them to go
                while True:
                    try:
                        salvia.client("sagemaker").describe_endpoint(EndpointName=name)
                        time.sleep(0.1)
                    except salvia.client("sagemaker").exceptions.ClientError:
                        break
    local, running, job = (statistics.median(v) for v in (locals_, runnings, jobs))
    print(f"medians of {args.rounds} rounds {'':<11} {'seconds':>8} {'rows/s':>12}")
    print(f"{'in-process pandas + predict':<34} {local:>8.2f} {args.rows / local:>12,.0f}")
    print(f"{'Salvia job, on its instances':<34} {running:>8.2f} {args.rows / running:>12,.0f}")
    print(f"{'Salvia job, CreateTransformJob on':<34} {job:>8.2f} {args.rows / job:>12,.0f}")
    print(f"ratio on the instances (Salvia / in-process rows/s): {local / running:.2f} "
          "(target >= 0.8)")  # fmt: skip
    print(f"ratio including instance start-up: {local / job:.2f}")
    print(
        f"serverless cold start, median of {len(cold)}: {statistics.median(cold):.2f} s "
        f"(range {min(cold):.2f}-{max(cold):.2f}; target < 2 s)"
    )
    print(
        f"async request to output, median of {len(queued)}: "
        f"{statistics.median(queued) * 1000:.0f} ms (range {min(queued) * 1000:.0f}-"
        f"{max(queued) * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
