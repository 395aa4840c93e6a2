"""Training-job overhead: (CreateTrainingJob -> Completed) minus the same script's run time as a
bare subprocess, medians of N runs, for each executor.

    .venv/bin/python benchmarks/training_overhead.py [--runs 10] [--executors local,ray]

The script is a small real one (scikit-learn on iris from an S3 channel, model saved to
SM_MODEL_DIR). The bare baseline runs it with the same interpreter, data and SM_* variables,
without Salvia. Target (issue 3): <= 1.0 s per job with the local executor.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import running_salvia

SCRIPT = """
import os, pickle
import numpy as np
from sklearn.linear_model import LogisticRegression
data = np.loadtxt(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "iris.csv"), delimiter=",")
model = LogisticRegression(max_iter=300).fit(data[:, 1:], data[:, 0])
print(f"accuracy={model.score(data[:, 1:], data[:, 0]):.3f}")
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.pkl"), "wb") as out:
    pickle.dump(model, out)
"""


def iris_csv() -> bytes:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return "\n".join(
        ",".join(str(v) for v in (label, *row)) for row, label in zip(x, y, strict=True)
    ).encode()


def bare_seconds(workdir: Path, data: bytes) -> float:
    """The script alone: same interpreter, data and SM_* paths, no platform."""
    (workdir / "train").mkdir(parents=True, exist_ok=True)
    (workdir / "model").mkdir(exist_ok=True)
    (workdir / "train" / "iris.csv").write_bytes(data)
    (workdir / "train.py").write_text(SCRIPT)
    env = {
        **os.environ,
        "SM_CHANNEL_TRAIN": str(workdir / "train"),
        "SM_MODEL_DIR": str(workdir / "model"),
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "train.py"], cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def job_seconds(sm: object, name: str, code_uri: str) -> float:
    client = sm  # a boto3 SageMaker client
    started = time.perf_counter()
    client.create_training_job(  # type: ignore[attr-defined]
        TrainingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/Bench",
        AlgorithmSpecification={"TrainingImage": "salvia/sklearn", "TrainingInputMode": "File"},
        HyperParameters={
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(code_uri),
        },
        InputDataConfig=[
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bench/data/"}
                },
            }
        ],
        OutputDataConfig={"S3OutputPath": "s3://bench/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 300},
    )
    while True:
        status = client.describe_training_job(TrainingJobName=name)  # type: ignore[attr-defined]
        if status["TrainingJobStatus"] in {"Completed", "Failed", "Stopped"}:
            elapsed = time.perf_counter() - started
            if status["TrainingJobStatus"] != "Completed":
                raise RuntimeError(f"{name}: {status.get('FailureReason')}")
            return elapsed
        time.sleep(0.01)


def measure_executor(executor: str, runs: int, data: bytes) -> list[float]:
    with running_salvia(SALVIA_EXECUTOR=executor) as salvia:
        try:
            s3, sm = salvia.client("s3"), salvia.client("sagemaker")
            s3.create_bucket(Bucket="bench")
            s3.put_object(Bucket="bench", Key="data/iris.csv", Body=data)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
                info = tarfile.TarInfo("train.py")
                info.size = len(SCRIPT)
                archive.addfile(info, io.BytesIO(SCRIPT.encode()))
            s3.put_object(Bucket="bench", Key="code/sourcedir.tar.gz", Body=buffer.getvalue())
            code = "s3://bench/code/sourcedir.tar.gz"
            job_seconds(sm, f"warmup-{executor}", code)  # first job pays one-time costs
            return [job_seconds(sm, f"bench-{executor}-{i}", code) for i in range(runs)]
        finally:
            if executor == "ray":  # the executor's local cluster outlives servers by design
                from salvia.compute.ray_executor import stop_local_cluster

                stop_local_cluster(salvia.home / "run" / "executor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--executors", default="local,ray")
    args = parser.parse_args()
    data = iris_csv()
    with tempfile.TemporaryDirectory() as scratch:
        bare_seconds(Path(scratch) / "warm", data)
        bare = statistics.median(
            bare_seconds(Path(scratch) / f"b{i}", data) for i in range(args.runs)
        )
    print(f"bare subprocess run time (median of {args.runs}): {bare:.3f} s")
    print(f"{'executor':10} {'job median s':>13} {'overhead s':>11} {'min':>7} {'max':>7}")
    for executor in args.executors.split(","):
        if executor == "ray" and importlib.util.find_spec("ray") is None:
            print(f"{executor:10} skipped: pip install 'salvia[ray]'")
            continue
        times = measure_executor(executor, args.runs, data)
        median = statistics.median(times)
        print(
            f"{executor:10} {median:13.3f} {median - bare:11.3f} "
            f"{min(times) - bare:7.3f} {max(times) - bare:7.3f}"
        )
    print("target: local overhead <= 1.0 s per job")


if __name__ == "__main__":
    main()
