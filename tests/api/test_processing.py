"""Processing jobs through boto3: a script at the literal /opt/ml/processing paths on two
instances with a sharded input, outputs landing in S3 (one of them continuously, visible before
the job ends), stopping, failures and validation."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"

# Sums each input file's numbers; every instance sees only its shard of the files.
SUMMING = """
import json, os, sys, time
config = json.load(open("/opt/ml/config/resourceconfig.json"))
job = json.load(open("/opt/ml/config/processingjobconfig.json"))
host = config["current_host"]
os.makedirs("/opt/ml/processing/progress", exist_ok=True)
with open(f"/opt/ml/processing/progress/{host}-started.txt", "w") as f:
    f.write("started")
time.sleep(float(sys.argv[sys.argv.index("--linger") + 1]))
files = sorted(os.listdir("/opt/ml/processing/input/data"))
totals = {}
for name in files:
    with open(os.path.join("/opt/ml/processing/input/data", name)) as f:
        totals[name] = sum(float(line) for line in f if line.strip())
with open(f"/opt/ml/processing/output/{host}.json", "w") as f:
    json.dump({"host": host, "job": job["ProcessingJobName"], "totals": totals}, f)
if "--fail" in sys.argv:
    sys.exit("the data did not add up")
"""


def processing_request(
    bucket: str, name: str, instances: int = 2, arguments: list[str] | None = None
) -> dict[str, Any]:
    return {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "AppSpecification": {
            "ImageUri": SKLEARN_IMAGE,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/sum.py"],
            "ContainerArguments": arguments or ["--linger", "0"],
        },
        "ProcessingInputs": [
            {"InputName": "code", "S3Input": {
                "S3Uri": f"s3://{bucket}/code/sum.py", "LocalPath": "/opt/ml/processing/input/code",
                "S3DataType": "S3Prefix", "S3InputMode": "File"}},
            {"InputName": "data", "S3Input": {
                "S3Uri": f"s3://{bucket}/numbers/", "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix", "S3InputMode": "File",
                "S3DataDistributionType": "ShardedByS3Key"}},
        ],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": "totals", "S3Output": {
                "S3Uri": f"s3://{bucket}/{name}/totals", "LocalPath": "/opt/ml/processing/output",
                "S3UploadMode": "EndOfJob"}},
            {"OutputName": "progress", "S3Output": {
                "S3Uri": f"s3://{bucket}/{name}/progress",
                "LocalPath": "/opt/ml/processing/progress", "S3UploadMode": "Continuous"}},
        ]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": instances, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }  # fmt: skip


@pytest.fixture(scope="module")
def bucket(server: SalviaServer) -> str:
    s3 = server.client("s3")
    name = unique("processing")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="code/sum.py", Body=SUMMING.encode())
    for index in range(4):
        numbers = "\n".join(str(index * 10 + k) for k in range(5))
        s3.put_object(Bucket=name, Key=f"numbers/part-{index}.txt", Body=numbers.encode())
    return name


def wait(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = sm.describe_processing_job(ProcessingJobName=name)
        if job["ProcessingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_two_instances_shard_the_input_and_upload_their_outputs(
    server: SalviaServer, bucket: str
) -> None:
    sm, s3 = server.client(), server.client("s3")
    name = unique("sum")
    arn = sm.create_processing_job(**processing_request(bucket, name, arguments=["--linger", "3"]))[
        "ProcessingJobArn"
    ]
    assert arn.endswith(f":processing-job/{name}")
    # the Continuous output shows up while the job still runs
    deadline = time.monotonic() + 60
    while len(keys(s3, bucket, f"{name}/progress/")) < 2:
        assert time.monotonic() < deadline, "the continuous output never appeared"
        time.sleep(0.2)
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "InProgress"
    job = wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["ProcessingStartTime"] <= job["ProcessingEndTime"]
    found = keys(s3, bucket, f"{name}/totals/")
    assert found == [f"{name}/totals/algo-1.json", f"{name}/totals/algo-2.json"]
    seen: dict[str, float] = {}
    for key in found:
        result = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert result["job"] == name
        assert len(result["totals"]) == 2  # four files, sharded over two instances
        seen.update(result["totals"])
    assert seen == {f"part-{i}.txt": float(sum(i * 10 + k for k in range(5))) for i in range(4)}
    summaries = sm.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    assert [s["ProcessingJobStatus"] for s in summaries] == ["Completed"]


def test_a_failing_script_fails_the_job_and_a_stop_stops_it(
    server: SalviaServer, bucket: str
) -> None:
    sm = server.client()
    failing = unique("fails")
    sm.create_processing_job(
        **processing_request(bucket, failing, instances=1, arguments=["--linger", "0", "--fail"])
    )
    job = wait(sm, failing)
    assert job["ProcessingJobStatus"] == "Failed"
    assert "the data did not add up" in job["FailureReason"]
    # the instance's output is in CloudWatch Logs, where the SDK and Studio read it
    logs = server.client("logs")
    group = "/aws/sagemaker/ProcessingJobs"
    (stream,) = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{failing}/")[
        "logStreams"
    ]
    assert stream["logStreamName"].startswith(f"{failing}/algo-1-")
    events = logs.get_log_events(
        logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True
    )["events"]
    assert "the data did not add up" in [e["message"] for e in events]

    slow = unique("slow")
    sm.create_processing_job(
        **processing_request(bucket, slow, instances=1, arguments=["--linger", "300"])
    )
    time.sleep(1)
    sm.stop_processing_job(ProcessingJobName=slow)
    assert wait(sm, slow)["ProcessingJobStatus"] == "Stopped"


def test_processing_requests_are_validated(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    good = processing_request(bucket, unique("v"))
    outside = json.loads(json.dumps(good))
    outside["ProcessingInputs"][1]["S3Input"]["LocalPath"] = "/tmp/data"
    twice = json.loads(json.dumps(good))
    twice["ProcessingInputs"][1]["InputName"] = "code"
    overlapping = json.loads(json.dumps(good))
    overlapping["ProcessingInputs"][1]["S3Input"]["LocalPath"] = "/opt/ml/processing/input/code"
    for request, words in [
        (outside, "ProcessingInputs.2.S3Input.LocalPath"),
        (twice, "ProcessingInputs.2.InputName"),
        (overlapping, "overlapping LocalPaths"),
    ]:
        request["ProcessingJobName"] = unique("v")
        with pytest.raises(ClientError) as refused:
            sm.create_processing_job(**request)
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert words in refused.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        sm.describe_processing_job(ProcessingJobName="nowhere")
    assert missing.value.response["Error"]["Code"] == "ValidationException"


def test_a_processing_job_records_its_lineage(server: SalviaServer, bucket: str) -> None:
    sm = server.client()
    name = unique("lineage")
    sm.create_processing_job(**processing_request(bucket, name, instances=1))
    assert wait(sm, name)["ProcessingJobStatus"] == "Completed"
    output = f"s3://{bucket}/{name}/totals"
    produced = sm.list_artifacts(SourceUri=output)["ArtifactSummaries"]
    assert len(produced) == 1
    found = sm.query_lineage(
        StartArns=[produced[0]["ArtifactArn"]], Direction="Ascendants", IncludeEdges=True
    )
    sources = {
        sm.describe_artifact(ArtifactArn=v["Arn"])["Source"]["SourceUri"]
        for v in found["Vertices"]
        if v["Type"] == "DataSet" and v["Arn"] != produced[0]["ArtifactArn"]
    }
    assert f"s3://{bucket}/numbers/" in sources  # the input data set, through the job
    components = [v for v in found["Vertices"] if v.get("LineageType") == "TrialComponent"]
    assert [c["Arn"].rsplit("/", 1)[1] for c in components] == [f"{name}-aws-processing-job"]
