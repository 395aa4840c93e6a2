"""Training jobs end to end, as a SageMaker user runs them with boto3: a real scikit-learn script
in script mode, its data from S3 channels, its model back in S3."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SalviaServer, unique

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"

TRAIN_SCRIPT = """
import argparse, json, os, pickle
import numpy as np
from sklearn.linear_model import LogisticRegression

parser = argparse.ArgumentParser()
parser.add_argument("-C", type=float, default=1.0)  # one-letter names get one dash
parser.add_argument("--max-iter", type=int, default=100)
args = parser.parse_args()

def load(channel):
    data = np.loadtxt(os.path.join(os.environ[f"SM_CHANNEL_{channel.upper()}"], "data.csv"),
                      delimiter=",")
    return data[:, 1:], data[:, 0]

x, y = load("train")
vx, vy = load("validation")
model = LogisticRegression(C=args.C, max_iter=args.max_iter).fit(x, y)
for epoch in range(3):
    print(f"epoch={epoch} train_accuracy={model.score(x, y):.4f};")
print(f"validation_accuracy={model.score(vx, vy):.4f};")
with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.pkl"), "wb") as out:
    pickle.dump(model, out)
print("hosts", os.environ["SM_HOSTS"], "current", os.environ["SM_CURRENT_HOST"])
"""


def source_tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def iris_csv(part: str) -> bytes:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    rows = [(label, *features) for features, label in zip(x, y, strict=True)]
    chosen = rows[::2] if part == "train" else rows[1::2]
    return "\n".join(",".join(str(v) for v in row) for row in chosen).encode()


@pytest.fixture(scope="module")
def bucket(server: SalviaServer) -> str:
    pytest.importorskip("sklearn")
    s3 = server.client("s3")
    name = "training-bucket"
    if name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key="iris/train/data.csv", Body=iris_csv("train"))
        s3.put_object(Bucket=name, Key="iris/validation/data.csv", Body=iris_csv("validation"))
    return name


def upload_code(server: SalviaServer, bucket: str, job: str, files: dict[str, str]) -> str:
    key = f"{job}/source/sourcedir.tar.gz"
    server.client("s3").put_object(Bucket=bucket, Key=key, Body=source_tarball(files))
    return f"s3://{bucket}/{key}"


def job_request(
    server: SalviaServer, bucket: str, name: str, script: str, **extra: Any
) -> dict[str, Any]:
    hyperparameters = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(
            upload_code(server, bucket, name, {"train.py": script})
        ),
        **extra.pop("HyperParameters", {}),
    }
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": SKLEARN_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "train:accuracy", "Regex": r"train_accuracy=([0-9.]+);"},
                {"Name": "validation:accuracy", "Regex": r"validation_accuracy=([0-9.]+);"},
            ],
        },
        "HyperParameters": hyperparameters,
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    request.update(extra)
    return request


def wait(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in {"Completed", "Failed", "Stopped"}:
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"{name} did not finish: {job}")


def test_sklearn_script_mode_job_completes_with_metrics_and_model(
    server: SalviaServer, bucket: str
) -> None:
    sm, s3 = server.client(), server.client("s3")
    experiment = unique("train-exp")
    sm.create_experiment(ExperimentName=experiment)
    name = unique("sk")
    request = job_request(
        server,
        bucket,
        name,
        TRAIN_SCRIPT,
        HyperParameters={"C": "0.5", "max-iter": "200"},
        InputDataConfig=[
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{bucket}/iris/{channel}",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "ContentType": "text/csv",
            }
            for channel in ("train", "validation")
        ],
        ExperimentConfig={"ExperimentName": experiment, "TrialName": f"{experiment}-trial"},
    )
    arn = sm.create_training_job(**request)["TrainingJobArn"]
    assert arn.endswith(f":training-job/{name}")
    job = wait(sm, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["SecondaryStatus"] == "Completed"
    statuses = [t["Status"] for t in job["SecondaryStatusTransitions"]]
    assert statuses[0] == "Starting" and "Training" in statuses and statuses[-1] == "Completed"
    assert job["TrainingTimeInSeconds"] >= 1 and job["BillableTimeInSeconds"] >= 1
    assert job["TrainingEndTime"] >= job["TrainingStartTime"]
    final = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert final["validation:accuracy"] > 0.8 and final["train:accuracy"] > 0.8

    url = job["ModelArtifacts"]["S3ModelArtifacts"]
    assert url == f"s3://{bucket}/output/{name}/output/model.tar.gz"
    blob = s3.get_object(Bucket=bucket, Key=f"output/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        model = pickle.loads(archive.extractfile("model.pkl").read())  # type: ignore[union-attr]
    assert model.C == 0.5 and model.predict([[5.1, 3.5, 1.4, 0.2]])[0] == 0

    component = sm.describe_trial_component(TrialComponentName=f"{name}-aws-training-job")
    assert component["Status"]["PrimaryStatus"] == "Completed"
    assert component["Source"]["SourceArn"] == arn
    assert component["Parameters"]["C"] == {"StringValue": "0.5"}
    series = {m["MetricName"]: m for m in component["Metrics"]}
    assert series["train:accuracy"]["Count"] == 3
    metrics = server.client("sagemaker-metrics").batch_get_metrics(
        MetricQueries=[
            {
                "MetricName": "train:accuracy",
                "ResourceArn": arn,
                "MetricStat": "Count",
                "Period": "OneHour",
                "XAxisType": "Timestamp",
            }
        ]
    )["MetricQueryResults"][0]
    assert sum(metrics["MetricValues"]) == 3

    listed = sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == [name]
    assert listed[0]["TrainingJobStatus"] == "Completed"
    found = sm.search(
        Resource="TrainingJob",
        SearchExpression={
            "Filters": [
                {"Name": "TrainingJobName", "Operator": "Equals", "Value": name},
                {"Name": "HyperParameters.C", "Operator": "Equals", "Value": "0.5"},
            ]
        },
    )["Results"]
    assert [r["TrainingJob"]["TrainingJobStatus"] for r in found] == ["Completed"]


def test_failing_script_reports_its_failure_file(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    script = """
import os, sys
with open("/opt/ml/output/failure" if os.path.isdir("/opt/ml/output") and
          os.access("/opt/ml/output", os.W_OK) else
          os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w") as f:
    f.write("ValueError: the data had no rows")
sys.exit(1)
"""
    name = unique("fail")
    sm.create_training_job(**job_request(server, bucket, name, script))
    job = wait(sm, name)
    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"] == "ValueError: the data had no rows"


def test_stop_ends_a_job_stopped(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    name = unique("stop")
    script = "import time\nprint('sleeping', flush=True)\ntime.sleep(300)\n"
    sm.create_training_job(**job_request(server, bucket, name, script))
    deadline = time.monotonic() + 30
    while sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in {
        "Stopping",
        "Stopped",
    }
    job = wait(sm, name, timeout=5)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "Stopped")
    with pytest.raises(sm.exceptions.ClientError) as excinfo:
        sm.stop_training_job(TrainingJobName=name)
    assert excinfo.value.response["Error"]["Code"] == "ValidationException"


def test_max_runtime_is_enforced(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    name = unique("maxrt")
    request = job_request(server, bucket, name, "import time\ntime.sleep(300)\n")
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 2}
    sm.create_training_job(**request)
    job = wait(sm, name, timeout=60)
    assert (job["TrainingJobStatus"], job["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")


def test_retry_resumes_from_checkpoint(server: SalviaServer, bucket: str) -> None:
    sm, s3 = server.client(), server.client("s3")
    script = """
import os, sys
checkpoint = "/opt/ml/checkpoints/progress.txt"
if not os.path.isdir("/opt/ml/checkpoints"):
    checkpoint = os.path.join(os.environ["SM_MODEL_DIR"], "..", "checkpoints", "progress.txt")
done = int(open(checkpoint).read()) if os.path.exists(checkpoint) else 0
print(f"resuming at {done}", flush=True)
for step in range(done, 10):
    with open(checkpoint, "w") as f:
        f.write(str(step + 1))
    if step == 4 and done == 0:
        print("simulated crash", flush=True)
        os._exit(3)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "resumed_from.txt"), "w") as f:
    f.write(str(done))
"""
    name = unique("retry")
    request = job_request(
        server,
        bucket,
        name,
        script,
        CheckpointConfig={"S3Uri": f"s3://{bucket}/checkpoints/{name}"},
        RetryStrategy={"MaximumRetryAttempts": 1},
    )
    sm.create_training_job(**request)
    job = wait(sm, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert "Restarting" in [t["Status"] for t in job["SecondaryStatusTransitions"]]
    blob = s3.get_object(Bucket=bucket, Key=f"output/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        assert archive.extractfile("resumed_from.txt").read() == b"5"  # type: ignore[union-attr]
    saved = s3.get_object(Bucket=bucket, Key=f"checkpoints/{name}/progress.txt")["Body"].read()
    assert saved == b"10"


def test_request_errors(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    name = unique("bad")
    base = job_request(server, bucket, name, "print('x')")
    for change, expected in [
        (
            {
                "AlgorithmSpecification": {
                    "TrainingImage": "nope/unknown:1",
                    "TrainingInputMode": "File",
                }
            },
            "salvia/sklearn",
        ),
        (
            {
                "ResourceConfig": {
                    "InstanceType": "ml.banana.large",
                    "InstanceCount": 1,
                    "VolumeSizeInGB": 1,
                }
            },
            "ml.banana.large",
        ),
        ({"EnableManagedSpotTraining": True}, "MaxWaitTimeInSeconds"),
    ]:
        with pytest.raises(sm.exceptions.ClientError) as excinfo:
            sm.create_training_job(**{**base, **change})
        error = excinfo.value.response["Error"]
        assert error["Code"] == "ValidationException", error
        assert expected in error["Message"]
    sm.create_training_job(**base)
    with pytest.raises(sm.exceptions.ResourceInUse):
        sm.create_training_job(**base)
    wait(sm, name)
    with pytest.raises(sm.exceptions.ClientError) as excinfo:
        sm.describe_training_job(TrainingJobName="no-such-job")
    assert excinfo.value.response["Error"]["Code"] == "ValidationException"


def test_network_isolation_blocks_sockets(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    script = f"""
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {server.port}), timeout=3).close()
except OSError as error:
    print(f"blocked: {{error}}", flush=True)
    sys.exit(0)
print("connected: isolation failed", flush=True)
sys.exit(1)
"""
    name = unique("iso")
    sm.create_training_job(**job_request(server, bucket, name, script, EnableNetworkIsolation=True))
    job = wait(sm, name)
    if job["TrainingJobStatus"] == "Failed":
        assert "network isolation is not available" in job["FailureReason"]
        pytest.skip(f"this host cannot isolate networks: {job['FailureReason']}")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")


def test_a_restarted_server_reattaches_to_a_running_job(
    own_server: SalviaServer, tmp_path: Path
) -> None:
    pytest.importorskip("sklearn")
    s3, sm = own_server.client("s3"), own_server.client()
    s3.create_bucket(Bucket="restart")
    name = unique("reattach")
    script = (
        "import time, os\nfor i in range(30):\n    print(f'tick={i};', flush=True)\n"
        "    time.sleep(0.1)\nopen(os.environ['SM_MODEL_DIR'] + '/done', 'w').write('ok')\n"
    )
    request = job_request(own_server, "restart", name, script)
    request["AlgorithmSpecification"]["MetricDefinitions"] = [
        {"Name": "tick", "Regex": r"tick=(\d+);"}
    ]
    sm.create_training_job(**request)
    deadline = time.monotonic() + 30
    while sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    own_server.restart()
    job = wait(own_server.client(), name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}["tick"] == 29


@pytest.mark.slow
def test_a_job_runs_on_the_ray_executor(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("sklearn")
    from salvia.compute.ray_executor import stop_local_cluster

    home = tmp_path / "home"
    home.mkdir()
    server = SalviaServer(home, env={"SALVIA_EXECUTOR": "ray"}).start()
    try:
        s3, sm = server.client("s3"), server.client()
        s3.create_bucket(Bucket="ray-bucket")
        s3.put_object(Bucket="ray-bucket", Key="iris/train/data.csv", Body=iris_csv("train"))
        s3.put_object(
            Bucket="ray-bucket", Key="iris/validation/data.csv", Body=iris_csv("validation")
        )
        name = unique("ray")
        request = job_request(
            server,
            "ray-bucket",
            name,
            TRAIN_SCRIPT,
            InputDataConfig=[
                {
                    "ChannelName": channel,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": f"s3://ray-bucket/iris/{channel}",
                        }
                    },
                }
                for channel in ("train", "validation")
            ],
        )
        sm.create_training_job(**request)
        job = wait(sm, name, timeout=180)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        final = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
        assert final["validation:accuracy"] > 0.8
    finally:
        server.stop()
        stop_local_cluster(home / "run" / "executor")


def test_a_job_whose_instances_died_with_the_server_is_failed_with_a_reason(
    own_server: SalviaServer,
) -> None:
    import os
    import signal

    pytest.importorskip("sklearn")
    s3, sm = own_server.client("s3"), own_server.client()
    s3.create_bucket(Bucket="lost")
    name = unique("lost")
    sm.create_training_job(
        **job_request(own_server, "lost", name, "import time\ntime.sleep(300)\n")
    )
    deadline = time.monotonic() + 30
    while sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    own_server.stop()
    for state in (own_server.home / "run" / "executor").glob("*/instance.json"):
        record = json.loads(state.read_text())
        os.kill(record["supervisor_pid"], signal.SIGKILL)  # a machine crash, as it were
    own_server.start()
    job = wait(own_server.client(), name, timeout=30)
    assert job["TrainingJobStatus"] == "Failed"
    assert "instance" in job["FailureReason"] and "gone" in job["FailureReason"]
