"""The model registry through boto3: a group's versions, their approval (announced to a webhook,
as EventBridge would), and deploying an approved version by its ModelPackageName."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_endpoints import ROLE, SKLEARN_IMAGE, archive, iris_model
from tests.conftest import SalviaServer, free_port, fresh_database, unique


class Webhook:
    """A tiny HTTP server that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received: queue.Queue[dict[str, Any]] = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.put(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/events"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        seen = []
        while True:
            try:
                event = self.received.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no matching event; received {seen}") from None
            if predicate(event):
                return event
            seen.append(event)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.httpd.shutdown()
    hook.httpd.server_close()


@pytest.fixture(scope="module")
def registry_server(
    backend: str, webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SalviaServer]:
    url, drop = fresh_database(backend)
    env = {"SALVIA_MODEL_EVENTS_WEBHOOK": webhook.url}
    instance = SalviaServer(tmp_path_factory.mktemp("home"), url, env=env).start()
    yield instance
    instance.stop()
    instance.stop_instances()
    drop()


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as excinfo:
        call()
    error = excinfo.value.response["Error"]
    return error["Code"], error["Message"]


def upload_model(server: SalviaServer, key: str) -> str:
    s3 = server.client("s3")
    if "registry" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="registry")
    s3.put_object(Bucket="registry", Key=key, Body=archive({"model.pkl": iris_model()}))
    return f"s3://registry/{key}"


def inference_specification(model_data: str) -> dict[str, Any]:
    return {
        "Containers": [
            {
                "Image": SKLEARN_IMAGE,
                "ModelDataUrl": model_data,
                "Environment": {"REGISTERED_BY": "tests"},
            }
        ],
        "SupportedContentTypes": ["text/csv"],
        "SupportedResponseMIMETypes": ["application/json"],
    }


def test_three_versions_one_approved_announced_and_deployed(
    registry_server: SalviaServer, webhook: Webhook
) -> None:
    pytest.importorskip("sklearn")
    sm = registry_server.client()
    group = unique("churn")
    group_arn = sm.create_model_package_group(
        ModelPackageGroupName=group, ModelPackageGroupDescription="churn models"
    )["ModelPackageGroupArn"]
    assert group_arn.endswith(f":model-package-group/{group}")
    described_group = sm.describe_model_package_group(ModelPackageGroupName=group)
    assert described_group["ModelPackageGroupStatus"] == "Completed"
    assert described_group["ModelPackageGroupDescription"] == "churn models"

    model_data = upload_model(registry_server, f"{group}/model.tar.gz")
    arns = []
    for accuracy in (0.81, 0.93, 0.88):
        arns.append(
            sm.create_model_package(
                ModelPackageGroupName=group,
                ModelPackageDescription=f"accuracy {accuracy}",
                InferenceSpecification=inference_specification(model_data),
                ModelMetrics={
                    "ModelQuality": {
                        "Statistics": {
                            "ContentType": "application/json",
                            "S3Uri": f"s3://registry/{group}/metrics-{accuracy}.json",
                        }
                    }
                },
                DriftCheckBaselines={
                    "ModelQuality": {
                        "Statistics": {
                            "ContentType": "application/json",
                            "S3Uri": f"s3://registry/{group}/baseline.json",
                        }
                    }
                },
                CustomerMetadataProperties={"accuracy": str(accuracy)},
            )["ModelPackageArn"]
        )
    assert [arn.rsplit("/", 2)[1:] for arn in arns] == [[group, "1"], [group, "2"], [group, "3"]]

    second = sm.describe_model_package(ModelPackageName=arns[1])
    assert second["ModelPackageVersion"] == 2
    assert second["ModelPackageGroupName"] == group
    assert second["ModelApprovalStatus"] == "PendingManualApproval"
    assert second["ModelPackageStatus"] == "Completed"
    assert second["CustomerMetadataProperties"] == {"accuracy": "0.93"}
    assert second["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].endswith("0.93.json")
    assert second["DriftCheckBaselines"]["ModelQuality"]["Statistics"]["S3Uri"].endswith(
        "baseline.json"
    )

    versions = sm.list_model_packages(ModelPackageGroupName=group, SortOrder="Ascending")
    assert [v["ModelPackageVersion"] for v in versions["ModelPackageSummaryList"]] == [1, 2, 3]

    sm.update_model_package(
        ModelPackageArn=arns[1],
        ModelApprovalStatus="Approved",
        ApprovalDescription="best validation accuracy",
        CustomerMetadataProperties={"promoted-by": "ci"},
    )
    event = webhook.wait_for(lambda e: e["detail"].get("ModelApprovalStatus") == "Approved")
    assert event["detail-type"] == "SageMaker Model Package State Change"
    assert event["source"] == "aws.sagemaker"
    assert event["resources"] == [arns[1]]
    assert event["detail"]["ModelPackageGroupName"] == group
    assert event["detail"]["ModelPackageVersion"] == 2
    assert event["detail"]["ApprovalDescription"] == "best validation accuracy"

    approved = sm.describe_model_package(ModelPackageName=arns[1])
    assert approved["ModelApprovalStatus"] == "Approved"
    assert approved["ApprovalDescription"] == "best validation accuracy"
    assert approved["LastModifiedBy"]["IamIdentity"]["Arn"].startswith("arn:aws:iam::")
    assert approved["LastModifiedTime"] > approved["CreationTime"]
    assert approved["CustomerMetadataProperties"] == {"accuracy": "0.93", "promoted-by": "ci"}
    only_approved = sm.list_model_packages(
        ModelPackageGroupName=group, ModelApprovalStatus="Approved"
    )["ModelPackageSummaryList"]
    assert [p["ModelPackageArn"] for p in only_approved] == [arns[1]]
    sm.update_model_package(ModelPackageArn=arns[0], ModelApprovalStatus="Rejected")
    webhook.wait_for(
        lambda e: e["resources"] == [arns[0]] and e["detail"]["ModelApprovalStatus"] == "Rejected"
    )

    # deploy the approved version by its ARN: the model takes the package's container
    name = unique("registered")
    sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"ModelPackageName": arns[1]}
    )
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert container["ModelPackageName"] == arns[1]
    assert container["Image"] == SKLEARN_IMAGE
    assert container["ModelDataUrl"] == model_data
    assert container["Environment"] == {"REGISTERED_BY": "tests"}
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
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    runtime = registry_server.client("sagemaker-runtime")
    response = runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="text/csv",
        Accept="application/json",
        Body="5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3",
    )
    assert [round(p) for p in json.loads(response["Body"].read())] == [0, 2]
    sm.delete_endpoint(EndpointName=name)


def test_lists_unversioned_packages_and_deletion(registry_server: SalviaServer) -> None:
    sm = registry_server.client()
    group = unique("lists")
    sm.create_model_package_group(ModelPackageGroupName=group)
    spec = inference_specification("s3://registry/lists/model.tar.gz")
    for _ in range(3):
        sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=spec)
    standalone = unique("standalone")
    arn = sm.create_model_package(ModelPackageName=standalone, InferenceSpecification=spec)[
        "ModelPackageArn"
    ]
    assert arn.endswith(f":model-package/{standalone}")
    described = sm.describe_model_package(ModelPackageName=standalone)
    assert described["ModelPackageArn"] == arn
    assert "ModelApprovalStatus" not in described

    first = sm.list_model_packages(ModelPackageGroupName=group, MaxResults=2)
    assert [p["ModelPackageVersion"] for p in first["ModelPackageSummaryList"]] == [3, 2]
    rest = sm.list_model_packages(
        ModelPackageGroupName=group, MaxResults=2, NextToken=first["NextToken"]
    )
    assert [p["ModelPackageVersion"] for p in rest["ModelPackageSummaryList"]] == [1]
    assert "NextToken" not in rest
    unversioned = sm.list_model_packages(NameContains="standalone")["ModelPackageSummaryList"]
    assert [p["ModelPackageName"] for p in unversioned] == [standalone]
    both = sm.list_model_packages(ModelPackageType="Both", SortBy="Name", SortOrder="Ascending")
    names = [p["ModelPackageName"] for p in both["ModelPackageSummaryList"]]
    assert group in names and standalone in names
    groups = sm.list_model_package_groups(NameContains=group)["ModelPackageGroupSummaryList"]
    assert [g["ModelPackageGroupName"] for g in groups] == [group]

    code, message = error_of(lambda: sm.delete_model_package_group(ModelPackageGroupName=group))
    assert code == "ValidationException" and "still has model packages" in message
    for version in (1, 2, 3):
        sm.delete_model_package(
            ModelPackageName=f"{arn.rsplit(':', 1)[0]}:model-package/{group}/{version}"
        )
    sm.delete_model_package_group(ModelPackageGroupName=group)
    sm.delete_model_package(ModelPackageName=standalone)
    code, message = error_of(lambda: sm.describe_model_package_group(ModelPackageGroupName=group))
    assert code == "ValidationException" and "does not exist" in message
    code, message = error_of(lambda: sm.describe_model_package(ModelPackageName=standalone))
    assert code == "ValidationException" and "does not exist" in message


def test_registry_request_errors(registry_server: SalviaServer) -> None:
    sm = registry_server.client()
    group = unique("errors")
    sm.create_model_package_group(ModelPackageGroupName=group)
    spec = inference_specification("s3://registry/errors/model.tar.gz")
    code, message = error_of(lambda: sm.create_model_package_group(ModelPackageGroupName=group))
    assert code == "ValidationException" and "already exists" in message
    code, message = error_of(
        lambda: sm.create_model_package(
            ModelPackageGroupName=unique("missing"), InferenceSpecification=spec
        )
    )
    assert code == "ValidationException" and "does not exist" in message
    code, message = error_of(
        lambda: sm.create_model_package(
            ModelPackageGroupName=group, ModelPackageName="both", InferenceSpecification=spec
        )
    )
    assert code == "ValidationException" and "ModelPackageGroupName" in message
    code, message = error_of(lambda: sm.create_model_package(ModelPackageGroupName=group))
    assert code == "ValidationException" and "InferenceSpecification" in message
    code, message = error_of(
        lambda: sm.create_model_package(
            ModelPackageGroupName=group,
            InferenceSpecification=spec,
            ModelApprovalStatus="Maybe",
        )
    )
    assert code == "ValidationException" and "modelapprovalstatus" in message.lower()
    bad_url = inference_specification("/tmp/model.tar.gz")
    code, message = error_of(
        lambda: sm.create_model_package(ModelPackageGroupName=group, InferenceSpecification=bad_url)
    )
    assert code == "ValidationException" and "modeldataurl" in message.lower()
    name = unique("dup")
    dup_arn = sm.create_model_package(ModelPackageName=name, InferenceSpecification=spec)[
        "ModelPackageArn"
    ]
    code, message = error_of(
        lambda: sm.create_model_package(ModelPackageName=name, InferenceSpecification=spec)
    )
    assert code == "ValidationException" and "ModelPackage already exists" in message
    code, message = error_of(
        lambda: sm.update_model_package(ModelPackageArn=dup_arn, ModelApprovalStatus="Approved")
    )
    assert code == "ValidationException" and "versioned" in message
    missing = f"arn:aws:sagemaker:us-east-1:123456789012:model-package/{group}/99"
    code, _ = error_of(
        lambda: sm.update_model_package(ModelPackageArn=missing, ModelApprovalStatus="Approved")
    )
    assert code == "ValidationException"
    code, message = error_of(
        lambda: sm.create_model(
            ModelName=unique("m"),
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"ModelPackageName": missing},
        )
    )
    assert code == "ValidationException" and "does not exist" in message
