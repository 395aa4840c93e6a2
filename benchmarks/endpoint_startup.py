"""Endpoint start-up: CreateEndpoint -> InService for an XGBoost and a scikit-learn model,
beside the time the model server alone takes to answer /ping (same model, same machine).

    .venv/bin/python benchmarks/endpoint_startup.py [--runs 5]

Target (issue 5): <= 3 s. SageMaker users wait minutes.
"""

from __future__ import annotations

import argparse
import io
import pickle
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _salvia import free_port, running_salvia, wait_healthy

IMAGES = {
    "xgboost": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
    "sklearn": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
}


def model_files(kind: str, directory: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    if kind == "xgboost":
        import xgboost as xgb

        booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, label=y), 50)
        booster.save_model(str(directory / "xgboost-model"))
    else:
        from sklearn.ensemble import RandomForestClassifier

        model = RandomForestClassifier(n_estimators=50, random_state=0).fit(x, y)
        (directory / "model.pkl").write_bytes(pickle.dumps(model))


def archive(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in directory.iterdir():
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def bare_server_seconds(kind: str, directory: Path) -> float:
    """The model server started directly: the floor under any endpoint start-up."""
    port = free_port()
    framework = "algorithm:xgboost" if kind == "xgboost" else "sklearn"
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "salvia.serving.model_server",
            "--model-dir",
            str(directory),
            "--port",
            str(port),
        ],
        env={"SALVIA_FRAMEWORK": framework, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/ping", process)
        return time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)


def endpoint_seconds(sm: Any, kind: str, name: str) -> float:
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/Bench",
        PrimaryContainer={"Image": IMAGES[kind], "ModelDataUrl": f"s3://bench/{kind}/model.tar.gz"},
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    started = time.perf_counter()
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    while True:
        status = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        if status != "Creating":
            elapsed = time.perf_counter() - started
            if status != "InService":
                raise RuntimeError(f"{name}: {status}")
            sm.delete_endpoint(EndpointName=name)
            return elapsed
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, running_salvia() as salvia:
        s3, sm = salvia.client("s3"), salvia.client("sagemaker")
        s3.create_bucket(Bucket="bench")
        print(f"{'model':8} {'CreateEndpoint->InService s':>28} {'bare server s':>14}")
        for kind in IMAGES:
            directory = Path(scratch) / kind
            directory.mkdir()
            model_files(kind, directory)
            s3.put_object(Bucket="bench", Key=f"{kind}/model.tar.gz", Body=archive(directory))
            endpoint = statistics.median(
                endpoint_seconds(sm, kind, f"{kind}-{i}") for i in range(args.runs)
            )
            bare = statistics.median(bare_server_seconds(kind, directory) for _ in range(args.runs))
            print(f"{kind:8} {endpoint:28.2f} {bare:14.2f}")
    print("target: <= 3 s (medians)")


if __name__ == "__main__":
    main()
