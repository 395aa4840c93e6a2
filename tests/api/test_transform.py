"""Batch transform through boto3: a Salvia-trained XGBoost model over CSV and JSON Lines inputs,
with MultiRecord batches, two instances, input and output filters and joins."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

XGBOOST = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
FEATURES = 5


def generated(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).round(4)
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] + rng.normal(scale=0.3, size=rows) > 0).astype(int)
    return x, y


def csv_text(x: np.ndarray, y: np.ndarray) -> bytes:
    table = np.column_stack([y, x])
    buffer = io.StringIO()
    np.savetxt(buffer, table, delimiter=",", fmt=["%d"] + ["%.4f"] * FEATURES)
    return buffer.getvalue().encode()


def wait(sm: Any, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = sm.describe_transform_job(TransformJobName=name)
        if job["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"transform job {name} did not finish")


@pytest.fixture(scope="module")
def trained(server: SalviaServer) -> dict[str, Any]:
    """A model trained by a Salvia training job, and its booster loaded here."""
    pytest.importorskip("xgboost")
    import xgboost as xgb

    sm, s3 = server.client(), server.client("s3")
    bucket = unique("transform")
    s3.create_bucket(Bucket=bucket)
    x, y = generated(5000, seed=1)
    s3.put_object(Bucket=bucket, Key="train/data.csv", Body=csv_text(x, y))
    job = unique("xgb")
    sm.create_training_job(
        TrainingJobName=job,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": XGBOOST, "TrainingInputMode": "File"},
        HyperParameters={"objective": "binary:logistic", "num_round": "30", "max_depth": "4"},
        InputDataConfig=[
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                "S3Uri": f"s3://{bucket}/train/"}},
            }
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{bucket}/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )  # fmt: skip
    sm.get_waiter("training_job_completed_or_stopped").wait(
        TrainingJobName=job, WaiterConfig={"Delay": 0.5, "MaxAttempts": 600}
    )
    artifact = sm.describe_training_job(TrainingJobName=job)["ModelArtifacts"]["S3ModelArtifacts"]
    sm.create_model(
        ModelName=job,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": XGBOOST, "ModelDataUrl": artifact},
    )
    key = artifact.split(f"s3://{bucket}/", 1)[1]
    archive = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
        booster = xgb.Booster()
        with xgb.config_context(verbosity=0):  # its format notice would be an error here
            booster.load_model(str(Path(scratch) / "xgboost-model"))
    return {"model": job, "bucket": bucket, "booster": booster}


def test_a_csv_joined_with_its_input_row_for_row(
    server: SalviaServer, trained: dict[str, Any]
) -> None:
    import xgboost as xgb

    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    parts = []
    for part in range(2):  # two objects: one per instance
        x, y = generated(100_000, seed=10 + part)
        s3.put_object(Bucket=bucket, Key=f"batch/part-{part}.csv", Body=csv_text(x, y))
        parts.append((x, y))
    name = unique("join")
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=trained["model"],
        BatchStrategy="MultiRecord",
        MaxPayloadInMB=1,
        MaxConcurrentTransforms=2,
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": f"s3://{bucket}/batch/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{bucket}/scored", "AssembleWith": "Line",
                         "Accept": "text/csv"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 2},
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input"},
    )  # fmt: skip
    job = wait(sm, name)
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    assert job["TransformStartTime"] <= job["TransformEndTime"]
    for part, (x, y) in enumerate(parts):
        body = s3.get_object(Bucket=bucket, Key=f"scored/part-{part}.csv.out")["Body"].read()
        table = np.loadtxt(io.BytesIO(body), delimiter=",")
        assert table.shape == (len(x), FEATURES + 2)  # label, features, prediction
        np.testing.assert_array_equal(table[:, 0], y)  # row for row, in the input's order
        np.testing.assert_allclose(table[:, 1:-1], x)
        expected = trained["booster"].predict(xgb.DMatrix(x))
        np.testing.assert_allclose(table[:, -1], expected, rtol=1e-5, atol=1e-6)
    listed = sm.list_transform_jobs(NameContains=name)["TransformJobSummaries"]
    assert [j["TransformJobStatus"] for j in listed] == ["Completed"]


def test_json_lines_with_an_output_filter(server: SalviaServer, trained: dict[str, Any]) -> None:
    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    x, _ = generated(300, seed=3)
    lines = [json.dumps({"id": f"r{i}", "features": row.tolist()}) for i, row in enumerate(x)]
    s3.put_object(Bucket=bucket, Key="jsonl/input.jsonl", Body="\n".join(lines).encode())
    name = unique("jsonl")
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=trained["model"],
        BatchStrategy="MultiRecord",
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": f"s3://{bucket}/jsonl/"}},
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{bucket}/jsonl-out", "AssembleWith": "Line",
                         "Accept": "application/jsonlines"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        DataProcessing={"InputFilter": "$.features", "JoinSource": "Input",
                        "OutputFilter": "$['id','SageMakerOutput']"},
    )  # fmt: skip
    job = wait(sm, name)
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    body = s3.get_object(Bucket=bucket, Key="jsonl-out/input.jsonl.out")["Body"].read()
    outputs = [json.loads(line) for line in body.decode().splitlines()]
    assert [o["id"] for o in outputs] == [f"r{i}" for i in range(len(x))]
    assert set(outputs[0]) == {"id", "SageMakerOutput"}
    import xgboost as xgb

    expected = trained["booster"].predict(xgb.DMatrix(x))
    # in batch mode the XGBoost container answers one bare score per line, whatever Accept
    scores = [o["SageMakerOutput"] for o in outputs]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)

    # the instance's model server output is in CloudWatch Logs, as SageMaker puts it
    logs, group = server.client("logs"), "/aws/sagemaker/TransformJobs"
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")
    [stream] = [s["logStreamName"] for s in streams["logStreams"]]
    assert stream.startswith(f"{name}/algo-1-")
    events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)
    assert any("Model loaded" in e["message"] for e in events["events"]), events["events"]


def features_csv(x: np.ndarray) -> bytes:
    buffer = io.StringIO()
    np.savetxt(buffer, x, delimiter=",", fmt="%.4f")
    return buffer.getvalue().encode()


def transform(
    sm: Any, model: str, bucket: str, prefix: str, output: str, **request: Any
) -> dict[str, Any]:
    name = unique("t")
    transform_input = {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                        "S3Uri": f"s3://{bucket}/{prefix}/"}},
        "ContentType": "text/csv",
        **request.pop("TransformInput", {}),
    }  # fmt: skip
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=model,
        TransformInput=transform_input,
        TransformOutput={"S3OutputPath": f"s3://{bucket}/{output}", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        **request,
    )
    return wait(sm, name)


def scores(body: bytes) -> np.ndarray:
    return np.array([float(line) for line in body.decode().splitlines()])


def test_gzipped_objects_streamed_a_payload_at_a_time(
    server: SalviaServer, trained: dict[str, Any]
) -> None:
    """Each object is read, decompressed and cut as its payloads go out (1 MB each here); the
    answers come back in the input's order."""
    import gzip

    import xgboost as xgb

    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    inputs = [generated(40_000, seed=20 + i)[0] for i in range(2)]
    for index, x in enumerate(inputs):
        body = gzip.compress(features_csv(x))
        s3.put_object(Bucket=bucket, Key=f"gz/part-{index}.csv.gz", Body=body)
    job = transform(
        sm, trained["model"], bucket, "gz", "gz-out",
        TransformInput={"SplitType": "Line", "CompressionType": "Gzip"},
        BatchStrategy="MultiRecord", MaxPayloadInMB=1,
    )  # fmt: skip
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    for index, x in enumerate(inputs):
        body = s3.get_object(Bucket=bucket, Key=f"gz-out/part-{index}.csv.gz.out")["Body"].read()
        expected = trained["booster"].predict(xgb.DMatrix(x))
        np.testing.assert_allclose(scores(body), expected, rtol=1e-5, atol=1e-6)


def test_whole_objects_and_single_records(server: SalviaServer, trained: dict[str, Any]) -> None:
    import xgboost as xgb

    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    x = generated(40, seed=30)[0]
    s3.put_object(Bucket=bucket, Key="small/input.csv", Body=features_csv(x))
    expected = trained["booster"].predict(xgb.DMatrix(x))
    for split, strategy in [("None", "MultiRecord"), ("Line", "SingleRecord")]:
        output = f"small-{split}-{strategy}"
        job = transform(
            sm, trained["model"], bucket, "small", output,
            TransformInput={"SplitType": split}, BatchStrategy=strategy,
        )  # fmt: skip
        assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
        body = s3.get_object(Bucket=bucket, Key=f"{output}/input.csv.out")["Body"].read()
        np.testing.assert_allclose(scores(body), expected, rtol=1e-5, atol=1e-6)


def test_an_output_bucket_that_does_not_exist_fails_the_job_with_the_reason(
    server: SalviaServer, trained: dict[str, Any]
) -> None:
    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    s3.put_object(Bucket=bucket, Key="nowhere/input.csv", Body=features_csv(generated(20, 32)[0]))
    missing = unique("no-such-bucket")
    name = unique("nowhere")
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=trained["model"],
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": f"s3://{bucket}/nowhere/"}},
                        "ContentType": "text/csv", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{missing}/out"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )  # fmt: skip
    job = wait(sm, name)
    assert job["TransformJobStatus"] == "Failed"
    reason = job["FailureReason"]
    assert reason.startswith("ClientError: Cannot write s3://") and missing in reason, reason


def test_a_stopped_job_writes_no_output(server: SalviaServer, trained: dict[str, Any]) -> None:
    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    s3.put_object(Bucket=bucket, Key="stop/input.csv", Body=features_csv(generated(50, 31)[0]))
    name = unique("stop")
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=trained["model"],
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": f"s3://{bucket}/stop/"}},
                        "ContentType": "text/csv", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{bucket}/stop-out"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )  # fmt: skip
    sm.stop_transform_job(TransformJobName=name)  # while its instance starts
    job = wait(sm, name)
    assert job["TransformJobStatus"] == "Stopped"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="stop-out/input.csv.out")


def test_a_failing_record_fails_the_job_with_its_position(
    server: SalviaServer, trained: dict[str, Any]
) -> None:
    sm, s3, bucket = server.client(), server.client("s3"), trained["bucket"]
    x, y = generated(2000, seed=4)
    rows = csv_text(x, y).decode().splitlines()
    rows[1233] = "1,2,three,4,5,6"  # record 1234 is not a number
    s3.put_object(Bucket=bucket, Key="bad/input.csv", Body="\n".join(rows).encode())
    name = unique("bad")
    sm.create_transform_job(
        TransformJobName=name,
        ModelName=trained["model"],
        BatchStrategy="MultiRecord",
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": f"s3://{bucket}/bad/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{bucket}/bad-out"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        DataProcessing={"InputFilter": "$[1:]"},
    )  # fmt: skip
    job = wait(sm, name)
    assert job["TransformJobStatus"] == "Failed"
    assert "record 1234" in job["FailureReason"]
    assert "bad/input.csv" in job["FailureReason"]
    with pytest.raises(ClientError):  # a partial output is never uploaded
        s3.head_object(Bucket=bucket, Key="bad-out/input.csv.out")


def test_transform_requests_are_validated(server: SalviaServer, trained: dict[str, Any]) -> None:
    sm = server.client()
    good: dict[str, Any] = {
        "ModelName": trained["model"],
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": "s3://b/in/"}}},
        "TransformOutput": {"S3OutputPath": "s3://b/out"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }  # fmt: skip
    for change, words in [
        ({"ModelName": "missing"}, "could not find model"),
        ({"MaxPayloadInMB": 60, "MaxConcurrentTransforms": 2}, "must not exceed 100"),
        ({"DataProcessing": {"InputFilter": "features"}}, "DataProcessing.InputFilter"),
        ({"TransformOutput": {"S3OutputPath": "/tmp/out"}}, "s3OutputPath"),
    ]:
        with pytest.raises(ClientError) as refused:
            sm.create_transform_job(TransformJobName=unique("v"), **{**good, **change})
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert words in refused.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        sm.describe_transform_job(TransformJobName="nope")
    assert missing.value.response["Error"]["Code"] == "ValidationException"
