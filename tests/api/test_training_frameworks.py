"""Framework jobs beyond scikit-learn: a 2-instance PyTorch job (gloo all-reduce across ranks),
the SageMaker SDK's estimator, and `salvia logs --follow` on a real job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.api.test_training import ROLE, upload_code, wait
from tests.conftest import SalviaServer, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

TORCH_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1-cpu-py310"

ALLREDUCE = """
import os
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"host={os.environ['SM_CURRENT_HOST']} rank={rank} world={world} sum={value.item()}",
      flush=True)
if rank == 0:
    torch.save({"sum": value}, os.path.join(os.environ["SM_MODEL_DIR"], "sum.pt"))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_instance_pytorch_job_all_reduces_across_ranks(own_server: SalviaServer) -> None:
    pytest.importorskip("torch")
    sm, s3, logs = own_server.client(), own_server.client("s3"), own_server.client("logs")
    s3.create_bucket(Bucket="torch")
    name = unique("ddp")
    sm.create_training_job(
        TrainingJobName=name,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": TORCH_IMAGE, "TrainingInputMode": "File"},
        HyperParameters={
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(
                upload_code(own_server, "torch", name, {"train.py": ALLREDUCE})
            ),
            "sagemaker_torch_distributed_enabled": "true",
        },
        OutputDataConfig={"S3OutputPath": "s3://torch/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 5},
        StoppingCondition={"MaxRuntimeInSeconds": 300},
    )
    job = wait(sm, name, timeout=240)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    streams = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/"
    )["logStreams"]
    assert len(streams) == 2
    lines = [
        event["message"]
        for stream in streams
        for event in logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs",
            logStreamName=stream["logStreamName"],
            startFromHead=True,
        )["events"]
        if "sum=" in event["message"]
    ]
    assert sorted(line.split()[0] for line in lines) == ["host=algo-1", "host=algo-2"]
    assert all("world=2" in line and "sum=3.0" in line for line in lines)


@pytest.fixture
def sdk_session(server: SalviaServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sagemaker = pytest.importorskip("sagemaker")
    pytest.importorskip("sklearn")
    for name, value in {
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        "AWS_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = server.client("s3")
    if "sdk-training" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="sdk-training")
    yield sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1"), default_bucket="sdk-training"
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sagemaker_sdk_sklearn_estimator_fits_and_tails_logs(
    sdk_session: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sagemaker.sklearn import SKLearn

    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(
        "import argparse, os, pickle\n"
        "from sklearn.datasets import load_iris\n"
        "from sklearn.tree import DecisionTreeClassifier\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--max-depth', type=int, default=2)\n"
        "args = parser.parse_args()\n"
        "x, y = load_iris(return_X_y=True)\n"
        "model = DecisionTreeClassifier(max_depth=args.max_depth).fit(x, y)\n"
        "print(f'accuracy={model.score(x, y):.3f}')\n"
        "pickle.dump(model, open(os.path.join(os.environ['SM_MODEL_DIR'], 'm.pkl'), 'wb'))\n"
    )
    estimator = SKLearn(
        entry_point="train.py",
        source_dir=str(source),
        framework_version="1.2-1",
        instance_type="ml.m5.large",
        instance_count=1,
        role=ROLE,
        sagemaker_session=sdk_session,
        hyperparameters={"max-depth": 3},
        metric_definitions=[{"Name": "accuracy", "Regex": r"accuracy=([0-9.]+)"}],
    )
    estimator.fit(wait=True, logs="All", job_name=unique("sdk-sklearn"))
    printed = capsys.readouterr().out
    assert "accuracy=" in printed  # the SDK tailed the job's log through CloudWatch Logs
    description = estimator.latest_training_job.describe()
    assert description["TrainingJobStatus"] == "Completed"
    assert estimator.model_data.endswith("/output/model.tar.gz")
    assert description["FinalMetricDataList"][0]["MetricName"] == "accuracy"


def test_salvia_logs_follow_prints_until_the_job_ends(server: SalviaServer) -> None:
    pytest.importorskip("sklearn")
    sm, s3 = server.client(), server.client("s3")
    if "follow" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="follow")
    name = unique("follow")
    script = (
        "import time\nfor i in range(5):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)\n"
    )
    sm.create_training_job(
        TrainingJobName=name,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "salvia/python", "TrainingInputMode": "File"},
        HyperParameters={
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(
                upload_code(server, "follow", name, {"train.py": script})
            ),
        },
        OutputDataConfig={"S3OutputPath": "s3://follow/out"},
        ResourceConfig={"InstanceType": "local", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "salvia.cli.main",
            "logs",
            name,
            "--follow",
            "--poll",
            "0.2",
            "--endpoint-url",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("line")] == [
        f"line {i}" for i in range(5)
    ]
