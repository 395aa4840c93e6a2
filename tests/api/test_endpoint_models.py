"""Endpoints of more than one model, through boto3: inference pipelines (a model of several
containers, called in series or directly by `TargetContainerHostname`) and multi-model endpoints
(`TargetModel` loads `<prefix>/<model>` on first use and evicts the least recently used)."""

from __future__ import annotations

import json
import pickle
import re
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_endpoints import ROLE, SKLEARN_IMAGE, archive, iris_model
from tests.conftest import SalviaServer, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

# Turns rows measured in millimetres (JSON) into centimetres (CSV) for the model behind it.
PREPROCESSOR = """
import json
import numpy as np

def model_fn(model_dir):
    return 10.0

def input_fn(body, content_type):
    assert content_type == "application/json", content_type
    return np.array(json.loads(body)["rows_mm"], dtype=float)

def predict_fn(rows, divisor):
    return rows / divisor

def output_fn(rows, accept):
    # the caller's Accept goes to the last container only; this one answers in its default
    assert accept == "text/csv", accept
    return "\\n".join(",".join(f"{v:.2f}" for v in row) for row in rows), "text/csv"
"""

IRIS_MM = {"rows_mm": [[51, 35, 14, 2], [67, 30, 52, 23]]}


@pytest.fixture
def runtime(server: SalviaServer) -> Any:
    pytest.importorskip("sklearn")
    return server.client("sagemaker-runtime")


def pipeline(server: SalviaServer, direct: bool = False) -> str:
    sm, s3 = server.client(), server.client("s3")
    if "pipelines" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="pipelines")
    name = unique("pipe")
    s3.put_object(
        Bucket="pipelines",
        Key=f"{name}/pre.tar.gz",
        Body=archive({"code/inference.py": PREPROCESSOR.encode()}),
    )
    s3.put_object(
        Bucket="pipelines", Key=f"{name}/model.tar.gz", Body=archive({"model.pkl": iris_model()})
    )
    extra: dict[str, Any] = {}
    if direct:
        extra["InferenceExecutionConfig"] = {"Mode": "Direct"}
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        Containers=[
            {
                "ContainerHostname": "preprocess",
                "Image": SKLEARN_IMAGE,
                "ModelDataUrl": f"s3://pipelines/{name}/pre.tar.gz",
                "Environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"},
            },
            {
                "ContainerHostname": "classify",
                "Image": SKLEARN_IMAGE,
                "ModelDataUrl": f"s3://pipelines/{name}/model.tar.gz",
            },
        ],
        **extra,
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
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    return name


def test_a_serial_pipeline_of_two_containers(server: SalviaServer, runtime: Any) -> None:
    name = pipeline(server)
    model = server.client().describe_model(ModelName=name)
    assert [c["ContainerHostname"] for c in model["Containers"]] == ["preprocess", "classify"]
    answer = runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Accept="application/json",
        Body=json.dumps(IRIS_MM),
    )
    assert answer["ContentType"] == "application/json"
    assert [round(p) for p in json.loads(answer["Body"].read())] == [0, 2]
    # the first container's failure is the caller's ModelError
    with pytest.raises(ClientError) as failure:
        runtime.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="1,2,3,4")
    assert failure.value.response["Error"]["Code"] == "ModelError"
    assert failure.value.response["OriginalStatusCode"] == 500
    assert "application/json" in failure.value.response["OriginalMessage"]
    server.client().delete_endpoint(EndpointName=name)


def test_a_direct_pipeline_calls_the_named_container(server: SalviaServer, runtime: Any) -> None:
    name = pipeline(server, direct=True)
    answer = runtime.invoke_endpoint(
        EndpointName=name,
        TargetContainerHostname="classify",
        ContentType="text/csv",
        Accept="application/json",
        Body="5.1,3.5,1.4,0.2",
    )
    assert [round(p) for p in json.loads(answer["Body"].read())] == [0]
    answer = runtime.invoke_endpoint(
        EndpointName=name,
        TargetContainerHostname="preprocess",
        ContentType="application/json",
        Accept="text/csv",
        Body=json.dumps(IRIS_MM),
    )
    assert answer["Body"].read().decode().splitlines()[0] == "5.10,3.50,1.40,0.20"
    for hostname in (None, "nope"):
        with pytest.raises(ClientError) as refused:
            extra = {"TargetContainerHostname": hostname} if hostname else {}
            runtime.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="1", **extra)
        assert refused.value.response["Error"]["Code"] == "ValidationError"
        assert "TargetContainerHostname" in refused.value.response["Error"]["Message"]
    server.client().delete_endpoint(EndpointName=name)


def test_pipeline_models_are_validated(server: SalviaServer) -> None:
    sm = server.client()
    twins = [{"ContainerHostname": "a", "Image": SKLEARN_IMAGE}] * 2
    for containers, extra, words in [
        (twins, {}, "distinct ContainerHostname"),
        (
            [{"Image": SKLEARN_IMAGE}, {"Image": SKLEARN_IMAGE}],
            {"InferenceExecutionConfig": {"Mode": "Direct"}},
            "ContainerHostname on every container",
        ),
    ]:
        with pytest.raises(ClientError) as refused:
            sm.create_model(
                ModelName=unique("bad"), ExecutionRoleArn=ROLE, Containers=containers, **extra
            )
        assert refused.value.response["Error"]["Code"] == "ValidationException"
        assert words in refused.value.response["Error"]["Message"]


def constant_model(value: float) -> bytes:
    """A model that always predicts `value`, padded to about 1 MB on disk."""
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor(strategy="constant", constant=value).fit([[0.0]], [value])
    return archive({"model.pkl": pickle.dumps(model), "padding.bin": bytes(1024 * 1024)})


def model_metrics(server: SalviaServer, endpoint: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        text = response.read().decode()
    found = {}
    for name, value in re.findall(
        rf'^(sagemaker_\w*model\w*)\{{endpoint="{endpoint}",variant="AllTraffic"\}} (\S+)$',
        text,
        re.MULTILINE,
    ):
        found[name] = float(value)
    return found


def test_a_multi_model_endpoint_keeps_the_recently_used_models(
    server: SalviaServer, runtime: Any
) -> None:
    sm, s3 = server.client(), server.client("s3")
    name = unique("mme")
    s3.create_bucket(Bucket=name)
    for label, value in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        s3.put_object(Bucket=name, Key=f"models/{label}.tar.gz", Body=constant_model(value))
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": SKLEARN_IMAGE,
            "Mode": "MultiModel",
            "ModelDataUrl": f"s3://{name}/models/",
            "Environment": {"SALVIA_MODEL_CACHE_MB": "2.5"},  # two 1 MB models fit, not three
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
             "InstanceType": "ml.m5.large"}
        ],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )

    def predict(label: str) -> float:
        answer = runtime.invoke_endpoint(
            EndpointName=name, TargetModel=f"{label}.tar.gz", ContentType="text/csv", Body="0"
        )
        return float(json.loads(answer["Body"].read())[0])

    assert (predict("a"), predict("b")) == (1.0, 2.0)
    assert model_metrics(server, name)["sagemaker_loaded_models"] == 2
    assert predict("a") == 1.0  # a hit, and now b is the least recently used
    assert predict("c") == 3.0  # evicts b
    seen = model_metrics(server, name)
    assert seen["sagemaker_model_loads_total"] == 3
    assert seen["sagemaker_model_unloads_total"] == 1
    assert seen["sagemaker_loaded_models"] == 2
    assert seen["sagemaker_model_cache_hits_total"] == 1
    assert predict("a") == 1.0  # still loaded: a hit
    assert predict("b") == 2.0  # loads again, evicting c
    seen = model_metrics(server, name)
    assert (seen["sagemaker_model_cache_hits_total"], seen["sagemaker_model_loads_total"]) == (2, 4)

    for extra, words in [
        ({}, "TargetModel is required"),
        ({"TargetModel": "missing.tar.gz"}, "Failed to download model data"),
    ]:
        with pytest.raises(ClientError) as refused:
            runtime.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="0", **extra)
        assert refused.value.response["Error"]["Code"] == "ValidationError"
        assert words in refused.value.response["Error"]["Message"]
    sm.delete_endpoint(EndpointName=name)


def test_target_model_on_a_single_model_endpoint_is_refused(
    server: SalviaServer, runtime: Any
) -> None:
    from tests.api.test_endpoints import deploy

    name = deploy(server, {"model.pkl": iris_model()})
    with pytest.raises(ClientError) as refused:
        runtime.invoke_endpoint(
            EndpointName=name, TargetModel="a.tar.gz", ContentType="text/csv", Body="1,2,3,4"
        )
    assert "not a multi-model endpoint" in refused.value.response["Error"]["Message"]
    server.client().delete_endpoint(EndpointName=name)
