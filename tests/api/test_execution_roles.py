"""Execution roles in authenticated mode: a training job runs with its role's temporary
credentials, so what its script can read and write in the object store is what the role allows;
creating the job needs iam:PassRole on that role. The job's SDK fetches them (and their
renewals) from the server's container credentials endpoint, as in SageMaker's containers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_training import job_request
from tests.conftest import SalviaServer, unique

# jobs and model servers on the same role path as SQLite's; the store's part is tested on both
pytestmark = pytest.mark.one_backend

ACCOUNT = "123456789012"

SCRIPT = """
import os, sys
import boto3

bucket = os.environ["DATA_BUCKET"]
s3 = boto3.client("s3")
credentials = boto3.Session().get_credentials()
print("credentials", credentials.method, credentials.access_key[:4], bool(credentials.token))
print("allowed", s3.get_object(Bucket=bucket, Key="allowed/a.txt")["Body"].read().decode())
s3.put_object(Bucket=bucket, Key="output/written.txt", Body=b"from the job")
try:
    s3.get_object(Bucket=bucket, Key="secret/b.txt")
except Exception as error:
    print("secret refused:", error)
    sys.exit(3)
print("secret read")
"""


@pytest.fixture(scope="module")
def server(iam_server: SalviaServer) -> SalviaServer:
    return iam_server


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


@pytest.fixture(scope="module")
def setup(server: SalviaServer) -> dict[str, str]:
    bucket = unique("roles")
    s3 = server.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="allowed/a.txt", Body=b"alpha")
    s3.put_object(Bucket=bucket, Key="secret/b.txt", Body=b"bravo")
    iam = server.client("iam")
    role = unique("job-role")
    trust = document({"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                      "Action": "sts:AssumeRole"})  # fmt: skip
    arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    iam.put_role_policy(
        RoleName=role,
        PolicyName="one-prefix",
        PolicyDocument=document(
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/allowed/*",
            },
            {
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{bucket}/output/*",
            },
        ),
    )
    return {"bucket": bucket, "role": arn}


def test_a_jobs_role_decides_what_it_may_read_and_write(
    server: SalviaServer, setup: dict[str, str]
) -> None:
    sm = server.client()
    bucket, role = setup["bucket"], setup["role"]
    name = unique("role-job")
    request = job_request(server, bucket, name, SCRIPT, RoleArn=role,
                          Environment={"DATA_BUCKET": bucket})  # fmt: skip
    sm.create_training_job(**request)
    deadline = time.monotonic() + 120
    while (job := sm.describe_training_job(TrainingJobName=name))["TrainingJobStatus"] not in {
        "Completed",
        "Failed",
        "Stopped",
    }:
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["TrainingJobStatus"] == "Failed"
    logs = server.client("logs")
    stream = logs.describe_log_streams(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/"
    )["logStreams"][0]["logStreamName"]
    text = "\n".join(
        e["message"]
        for e in logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream, startFromHead=True
        )["events"]
    )
    # the role's temporary key with its session token, from the container credentials endpoint
    assert "credentials container-role ASIA True" in text
    assert "allowed alpha" in text
    assert "secret refused" in text and "AccessDenied" in text
    assert "secret read" not in text
    written = server.client("s3").get_object(Bucket=bucket, Key="output/written.txt")
    assert written["Body"].read() == b"from the job"


def test_passing_a_role_needs_iam_pass_role(server: SalviaServer, setup: dict[str, str]) -> None:
    iam = server.client("iam")
    user = unique("trainer")
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="train",
        PolicyDocument=document(
            {"Effect": "Allow", "Action": "sagemaker:CreateTrainingJob", "Resource": "*"}
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    trainer = server.client(credentials=(key["AccessKeyId"], key["SecretAccessKey"]))
    request = {
        "TrainingJobName": unique("no-pass"),
        "RoleArn": setup["role"],
        "AlgorithmSpecification": {"TrainingImage": "salvia/sklearn", "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": f"s3://{setup['bucket']}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    with pytest.raises(ClientError) as refused:
        trainer.create_training_job(**request)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "iam:PassRole" in str(refused.value)

    iam.create_role(RoleName="not-for-sagemaker", AssumeRolePolicyDocument=document(
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
         "Action": "sts:AssumeRole"}))  # fmt: skip
    for role in ("not-there", "not-for-sagemaker"):
        unknown = dict(request, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/{role}")
        with pytest.raises(ClientError) as missing:
            server.client().create_training_job(**unknown)
        assert missing.value.response["Error"]["Code"] == "ValidationException"
        assert "Could not assume role" in str(missing.value)


def test_the_credentials_endpoint_answers_only_a_valid_grant(server: SalviaServer) -> None:
    import urllib.error
    import urllib.request

    for token in (None, "forged"):
        request = urllib.request.Request(f"{server.url}/_salvia/credentials")
        if token:
            request.add_header("Authorization", token)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403
        assert b"AccessDenied" in refused.value.read()
        refused.value.close()


INFERENCE = """
import json
import boto3

def model_fn(model_dir):
    return boto3.client("s3")

def input_fn(body, content_type):
    return json.loads(body)

def predict_fn(data, s3):
    try:
        return s3.get_object(Bucket=data["bucket"], Key=data["key"])["Body"].read().decode()
    except Exception as error:
        return f"refused: {error}"

def output_fn(prediction, accept):
    return json.dumps({"answer": prediction}), "application/json"
"""


def test_an_endpoints_model_reads_what_its_execution_role_allows(
    server: SalviaServer, setup: dict[str, str]
) -> None:
    from tests.api.test_endpoints import SKLEARN_IMAGE, archive

    sm, s3 = server.client(), server.client("s3")
    bucket, name = setup["bucket"], unique("role-ep")
    s3.put_object(Bucket=bucket, Key=f"models/{name}.tar.gz",
                  Body=archive({"code/inference.py": INFERENCE.encode()}))  # fmt: skip
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=setup["role"],
        PrimaryContainer={"Image": SKLEARN_IMAGE,
                          "ModelDataUrl": f"s3://{bucket}/models/{name}.tar.gz"},
    )  # fmt: skip
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name,
                             "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    runtime = server.client("sagemaker-runtime")

    def ask(key: str) -> str:
        body = json.dumps({"bucket": bucket, "key": key})
        reply = runtime.invoke_endpoint(
            EndpointName=name, Body=body, ContentType="application/json"
        )
        return str(json.loads(reply["Body"].read())["answer"])

    try:
        assert ask("allowed/a.txt") == "alpha"
        refused = ask("secret/b.txt")
        assert refused.startswith("refused") and "AccessDenied" in refused
    finally:
        sm.delete_endpoint(EndpointName=name)
