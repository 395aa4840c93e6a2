"""Batch transform throughput: rows/s of a transform job over a 1M-row CSV beside the same
XGBoost model's in-process `predict` on the same data and cores, in the same run.

    .venv/bin/python benchmarks/batch_transform.py [--rows 1000000]

Salvia's figure is the whole job, CreateTransformJob -> Completed: starting the instance, reading
the object, cutting it into MultiRecord payloads, the model server parsing and predicting, and
writing the `.out` object. The in-process figure reads the same CSV with pandas, builds the
DMatrix and predicts with every core. Target (issue 6): >= 0.8 x in-process.
"""

from __future__ import annotations

import argparse
import io
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


def transform(salvia: Salvia, model_dir: Path, data: Path) -> float:
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
    started = time.perf_counter()
    sm.create_transform_job(
        TransformJobName="bench",
        ModelName="bench",
        BatchStrategy="MultiRecord",
        MaxPayloadInMB=6,
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": "s3://bench/input/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": "s3://bench/output", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )  # fmt: skip
    while True:
        job = sm.describe_transform_job(TransformJobName="bench")
        if job["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if job["TransformJobStatus"] != "Completed":
        raise SystemExit(f"transform job {job['TransformJobStatus']}: {job.get('FailureReason')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data = scratch / "data.csv"
        make_data(args.rows, data)
        booster = train(scratch)
        size_mb = data.stat().st_size / 1e6
        print(f"{args.rows:,} rows x {FEATURES} features, {size_mb:.0f} MB of CSV")
        local = in_process(booster, data)
        with running_salvia() as salvia:
            job = transform(salvia, scratch, data)
    print(f"{'':<34} {'seconds':>8} {'rows/s':>12}")
    print(f"{'in-process pandas + predict':<34} {local:>8.2f} {args.rows / local:>12,.0f}")
    print(f"{'Salvia transform job':<34} {job:>8.2f} {args.rows / job:>12,.0f}")
    print(f"ratio (Salvia / in-process rows/s): {local / job:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
