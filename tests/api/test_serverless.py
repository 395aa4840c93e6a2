"""Serverless inference through boto3: instances start on the first request (a cold start,
counted in /metrics), stop when idle, start again on demand, and requests over MaxConcurrency
are throttled."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_endpoints import ROLE, SKLEARN_IMAGE, archive
from tests.conftest import SalviaServer, fresh_database, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

SLOW_ECHO = """
import json
import time

def model_fn(model_dir):
    return None

def input_fn(body, content_type):
    return json.loads(body)

def predict_fn(request, model):
    time.sleep(request.get("sleep", 0))
    return {"echo": request["value"]}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""


@pytest.fixture
def quick_idle(backend: str, tmp_path: Path) -> Iterator[SalviaServer]:
    url, drop = fresh_database(backend)
    instance = SalviaServer(tmp_path / "home", url, env={"SALVIA_SERVERLESS_IDLE_SECONDS": "1"})
    instance.home.mkdir()
    instance.start()
    yield instance
    if instance.process is not None and instance.process.poll() is None:
        instance.stop()
    instance.stop_instances()
    drop()


def serverless_endpoint(server: SalviaServer, max_concurrency: int) -> str:
    sm, s3 = server.client(), server.client("s3")
    name = unique("sls")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="model.tar.gz",
                  Body=archive({"code/inference.py": SLOW_ECHO.encode()}))  # fmt: skip
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": SKLEARN_IMAGE, "ModelDataUrl": f"s3://{name}/model.tar.gz"},
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name,
                             "ServerlessConfig": {"MemorySizeInMB": 2048,
                                                  "MaxConcurrency": max_concurrency}}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    return name


def cold_starts(server: SalviaServer, endpoint: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        text = response.read().decode()
    found = re.search(
        rf'^sagemaker_cold_starts_total\{{endpoint="{endpoint}",variant="AllTraffic"\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


def test_serverless_scales_to_zero_serves_again_and_throttles(quick_idle: SalviaServer) -> None:
    server = quick_idle
    sm, runtime = server.client(), server.client("sagemaker-runtime", max_pool_connections=8)
    name = serverless_endpoint(server, max_concurrency=2)

    def instances() -> int:
        variant = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
        return int(variant["CurrentInstanceCount"])

    def invoke(value: int, sleep: float = 0.0) -> Any:
        body = json.dumps({"value": value, "sleep": sleep})
        answer = runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=body
        )
        return json.loads(answer["Body"].read())["echo"]

    described = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
    assert described["CurrentInstanceCount"] == 0  # nothing runs until a request comes
    assert described["CurrentServerlessConfig"]["MaxConcurrency"] == 2
    assert invoke(1) == 1  # waits for its cold start
    assert cold_starts(server, name) == 1
    assert instances() == 1
    deadline = time.monotonic() + 30
    while instances() != 0:
        assert time.monotonic() < deadline, "the idle serverless instance did not stop"
        time.sleep(0.2)
    assert invoke(2) == 2
    assert cold_starts(server, name) == 2

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(invoke, i, 1.5) for i in range(4)]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result())
            except ClientError as error:
                outcomes.append(error.response["Error"]["Code"])
    assert outcomes.count("ThrottlingException") >= 1
    assert sum(isinstance(o, int) for o in outcomes) >= 1

    with pytest.raises(ClientError) as too_big:
        runtime.invoke_endpoint(EndpointName=name, ContentType="application/json",
                                Body=b"x" * (5 * 1024 * 1024))  # fmt: skip
    assert "4 MB" in too_big.value.response["Error"]["Message"]
    sm.delete_endpoint(EndpointName=name)


def test_serverless_configs_are_validated(server: SalviaServer) -> None:
    sm = server.client()
    model = unique("m")
    sm.create_model(ModelName=model, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": SKLEARN_IMAGE})  # fmt: skip
    for config, words in [
        ({"MemorySizeInMB": 1500, "MaxConcurrency": 2}, "MemorySizeInMB must be one of"),
        (
            {"MemorySizeInMB": 1024, "MaxConcurrency": 2, "ProvisionedConcurrency": 3},
            "cannot exceed MaxConcurrency",
        ),
    ]:
        with pytest.raises(ClientError) as refused:
            sm.create_endpoint_config(
                EndpointConfigName=unique("bad"),
                ProductionVariants=[{"VariantName": "v", "ModelName": model,
                                     "ServerlessConfig": config}],
            )  # fmt: skip
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert words in refused.value.response["Error"]["Message"]
