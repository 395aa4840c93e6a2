"""Asynchronous inference through boto3: InvokeEndpointAsync answers at once, a durable queue
survives a server restart with every output written exactly once, notifications reach
webhooks, and a variant with MinCapacity 0 scales to zero and back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_endpoints import ROLE, SKLEARN_IMAGE, archive
from tests.conftest import SalviaServer, fresh_database, unique

DOUBLER = """
import json
import time

def model_fn(model_dir):
    return 2

def input_fn(body, content_type):
    return json.loads(body)

def predict_fn(request, factor):
    time.sleep(0.1)
    if request["x"] < 0:
        raise ValueError("negative input")
    return {"id": request["id"], "y": request["x"] * factor}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""
OK_TOPIC = "arn:aws:sns:us-east-1:123456789012:inference-ok"
FAILED_TOPIC = "arn:aws:sns:us-east-1:123456789012:inference-failed"


class Webhook:
    """Collects the notifications POSTed to it."""

    def __init__(self) -> None:
        received: list[tuple[str, dict[str, Any]]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append((self.path, json.loads(self.rfile.read(length))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.fixture
def hooked(backend: str, tmp_path: Path) -> Iterator[tuple[SalviaServer, Webhook]]:
    webhook = Webhook()
    url, drop = fresh_database(backend)
    env = {
        "SALVIA_NOTIFICATION_WEBHOOKS": f"{OK_TOPIC}={webhook.url}/ok,"
        f"{FAILED_TOPIC}={webhook.url}/failed",
        "SALVIA_ASYNC_SCALE_IN_SECONDS": "1",
    }
    instance = SalviaServer(tmp_path / "home", url, env=env)
    instance.home.mkdir()
    instance.start()
    yield instance, webhook
    if instance.process is not None and instance.process.poll() is None:
        instance.stop()
    instance.stop_instances()
    webhook.http.shutdown()
    webhook.http.server_close()
    drop()


def async_endpoint(server: SalviaServer, bucket: str, concurrency: int = 2) -> str:
    sm, s3 = server.client(), server.client("s3")
    name = unique("async")
    s3.put_object(Bucket=bucket, Key=f"{name}/model.tar.gz",
                  Body=archive({"code/inference.py": DOUBLER.encode()}))  # fmt: skip
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": SKLEARN_IMAGE,
                          "ModelDataUrl": f"s3://{bucket}/{name}/model.tar.gz"},
    )  # fmt: skip
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name,
                             "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}],
        AsyncInferenceConfig={
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": concurrency},
            "OutputConfig": {
                "S3OutputPath": f"s3://{bucket}/{name}/out/",
                "S3FailurePath": f"s3://{bucket}/{name}/failed/",
                "NotificationConfig": {"SuccessTopic": OK_TOPIC, "ErrorTopic": FAILED_TOPIC},
            },
        },
    )  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    return name


def read(s3: Any, location: str) -> bytes | None:
    bucket, key = location.removeprefix("s3://").split("/", 1)
    try:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError:
        return None


def test_fifty_requests_across_a_restart_each_answered_once(
    hooked: tuple[SalviaServer, Webhook],
) -> None:
    server, webhook = hooked
    s3 = server.client("s3")
    bucket = unique("async")
    s3.create_bucket(Bucket=bucket)
    name = async_endpoint(server, bucket)
    failing = {7, 33}
    calls = []
    for index in range(50):
        if index == 25:
            server.restart()  # with requests queued and in flight
            s3 = server.client("s3")
        x = -1 if index in failing else index
        key = f"inputs/{index}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({"id": index, "x": x}).encode())
        answer = server.client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName=name,
            InputLocation=f"s3://{bucket}/{key}",
            ContentType="application/json",
            InferenceId=f"request-{index}",
        )
        assert answer["InferenceId"] == f"request-{index}"
        calls.append((index, answer["OutputLocation"], answer["FailureLocation"]))

    deadline = time.monotonic() + 120
    while len(webhook.received) < 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    for index, output, failure in calls:
        answer, error = read(s3, output), read(s3, failure)
        if index in failing:
            assert answer is None and error is not None
            assert b"negative input" in error
        else:
            assert error is None and answer is not None
            assert json.loads(answer) == {"id": index, "y": index * 2}
    time.sleep(0.5)  # nothing answered twice, nothing late
    ids = [message["inferenceId"] for _, message in webhook.received]
    assert sorted(ids) == sorted(f"request-{i}" for i in range(50))
    by_path = {path for path, _ in webhook.received}
    assert by_path == {"/ok", "/failed"}
    for path, message in webhook.received:
        assert message["eventName"] == "InferenceResult"
        if path == "/failed":
            assert message["invocationStatus"] == "Failed"
            assert message["responseParameters"]["sageMakerFailureLocation"].endswith("-error.out")
        else:
            assert message["invocationStatus"] == "Completed"
            assert message["responseParameters"]["sageMakerOutputLocation"].startswith("s3://")
    server.client().delete_endpoint(EndpointName=name)


def test_an_idle_async_variant_scales_to_zero_and_back(
    hooked: tuple[SalviaServer, Webhook],
) -> None:
    server, _ = hooked
    sm, s3 = server.client(), server.client("s3")
    bucket = unique("zero")
    s3.create_bucket(Bucket=bucket)
    name = async_endpoint(server, bucket)
    server.client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=f"endpoint/{name}/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=0,
        MaxCapacity=2,
    )

    def instances() -> int:
        described = sm.describe_endpoint(EndpointName=name)
        return int(described["ProductionVariants"][0]["CurrentInstanceCount"])

    deadline = time.monotonic() + 60
    while instances() != 0:
        assert time.monotonic() < deadline, "the idle variant did not scale to zero"
        time.sleep(0.2)
    s3.put_object(Bucket=bucket, Key="in.json", Body=b'{"id": 1, "x": 21}')
    answer = server.client("sagemaker-runtime").invoke_endpoint_async(
        EndpointName=name, InputLocation=f"s3://{bucket}/in.json", ContentType="application/json"
    )
    deadline = time.monotonic() + 60
    while (output := read(s3, answer["OutputLocation"])) is None:
        assert time.monotonic() < deadline, "the request was not served after scaling up"
        time.sleep(0.2)
    assert json.loads(output) == {"id": 1, "y": 42}
    assert instances() >= 1
    sm.delete_endpoint(EndpointName=name)


def test_async_requests_are_validated(server: SalviaServer) -> None:
    runtime = server.client("sagemaker-runtime")
    with pytest.raises(ClientError) as missing:
        runtime.invoke_endpoint_async(EndpointName="nowhere", InputLocation="s3://b/k")
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    sm = server.client()
    with pytest.raises(ClientError) as refused:
        sm.create_endpoint_config(
            EndpointConfigName=unique("bad"),
            ProductionVariants=[{"VariantName": "v", "ModelName": "m"}],
            AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "/tmp/out"}},
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
