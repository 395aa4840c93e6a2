"""Real-time endpoints through boto3: CreateModel, CreateEndpointConfig, CreateEndpoint and
sagemaker-runtime InvokeEndpoint, with real model-server processes behind the gateway."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer, unique

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"

HANDLERS = """
import json
import numpy as np

def model_fn(model_dir):
    with open(f"{model_dir}/factor.txt") as f:
        return float(f.read())

def input_fn(body, content_type):
    assert content_type == "application/json", content_type
    return np.array(json.loads(body)["values"])

def predict_fn(data, factor):
    if (data < 0).any():
        raise ValueError("negative values are not allowed")
    return data * factor

def output_fn(prediction, accept):
    return json.dumps({"scaled": prediction.tolist(), "accept": accept}), "application/json"
"""


def archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def iris_model() -> bytes:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return pickle.dumps(LogisticRegression(max_iter=500).fit(x, y))


def deploy(
    server: SalviaServer,
    files: dict[str, bytes],
    image: str = SKLEARN_IMAGE,
    variants: list[tuple[str, float]] | None = None,
    wait: bool = True,
) -> str:
    sm, s3 = server.client(), server.client("s3")
    if "hosting" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="hosting")
    name = unique("ep")
    s3.put_object(Bucket="hosting", Key=f"{name}/model.tar.gz", Body=archive(files))
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": image, "ModelDataUrl": f"s3://hosting/{name}/model.tar.gz"},
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "InitialVariantWeight": weight,
            }
            for variant, weight in (variants or [("AllTraffic", 1.0)])
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    if wait:
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
        )
    return name


@pytest.fixture
def runtime(server: SalviaServer) -> Any:
    pytest.importorskip("salvia.serving.model_server")
    return server.client("sagemaker-runtime", max_pool_connections=8)


def test_deploy_a_scikit_learn_model_and_predict(server: SalviaServer, runtime: Any) -> None:
    pytest.importorskip("sklearn")
    name = deploy(server, {"model.pkl": iris_model()})
    described = server.client().describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    response = runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="text/csv",
        Accept="application/json",
        Body="5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3",
    )
    assert response["InvokedProductionVariant"] == "AllTraffic"
    predictions = json.loads(response["Body"].read())
    assert [round(p) for p in predictions] == [0, 2]


def test_custom_handlers_and_model_errors(server: SalviaServer, runtime: Any) -> None:
    name = deploy(server, {"factor.txt": b"2.5", "code/inference.py": HANDLERS.encode()})
    response = runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Accept="application/json",
        Body=json.dumps({"values": [1, 2]}),
    )
    assert json.loads(response["Body"].read())["scaled"] == [2.5, 5.0]
    with pytest.raises(ClientError) as excinfo:
        runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=json.dumps({"values": [-1]})
        )
    error = excinfo.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert error["OriginalStatusCode"] == 500
    assert "negative values are not allowed" in error["OriginalMessage"]
    with pytest.raises(ClientError) as excinfo:
        runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=b"x" * (7 * 1024 * 1024)
        )
    assert excinfo.value.response["Error"]["Code"] == "ValidationError"

    with urllib.request.urlopen(f"{server.url}/metrics") as response:  # a Prometheus scrape
        exposition = response.read().decode()
    labels = f'{{endpoint="{name}",variant="AllTraffic"}}'
    assert f"sagemaker_invocations_total{labels} 2" in exposition
    assert f"sagemaker_invocation_5xx_errors_total{labels} 1" in exposition
    assert f"sagemaker_model_latency_microseconds_sum{labels}" in exposition


@pytest.mark.one_backend  # 2,000 invocations: the gateway's routing, not the store
def test_two_variants_split_traffic_by_weight(server: SalviaServer, runtime: Any) -> None:
    name = deploy(
        server,
        {"factor.txt": b"1", "code/inference.py": HANDLERS.encode()},
        variants=[("Blue", 0.7), ("Green", 0.3)],
    )
    counts: Counter[str] = Counter()
    for _ in range(2000):
        response = runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=b'{"values": [1]}'
        )
        counts[response["InvokedProductionVariant"]] += 1
    assert abs(counts["Blue"] / 2000 - 0.7) <= 0.05, counts
    targeted = runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Body=b'{"values": [1]}',
        TargetVariant="Green",
    )
    assert targeted["InvokedProductionVariant"] == "Green"


def test_a_model_that_cannot_load_fails_the_endpoint(server: SalviaServer, runtime: Any) -> None:
    broken = b"def model_fn(model_dir):\n    raise RuntimeError('weights are corrupt')\n"
    name = deploy(server, {"code/inference.py": broken}, wait=False)
    sm = server.client()
    deadline = time.monotonic() + 120
    while (status := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status["EndpointStatus"] == "Failed"
    assert "weights are corrupt" in status["FailureReason"]


def test_hosting_errors_and_deletion(server: SalviaServer, runtime: Any) -> None:
    sm = server.client()
    for call in (
        lambda: sm.describe_model(ModelName="nope"),
        lambda: sm.describe_endpoint_config(EndpointConfigName="nope"),
        lambda: sm.describe_endpoint(EndpointName="nope"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert excinfo.value.response["Error"]["Code"] == "ValidationException"
        assert "Could not find" in excinfo.value.response["Error"]["Message"]
    name = deploy(server, {"factor.txt": b"1", "code/inference.py": HANDLERS.encode()})
    with pytest.raises(ClientError) as excinfo:
        sm.create_model(
            ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": SKLEARN_IMAGE}
        )
    assert "Cannot create already existing model" in excinfo.value.response["Error"]["Message"]
    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
    )
    with pytest.raises(ClientError) as excinfo:
        runtime.invoke_endpoint(EndpointName=name, ContentType="application/json", Body=b"{}")
    assert excinfo.value.response["Error"]["Code"] == "ValidationError"
    assert [e["EndpointName"] for e in sm.list_endpoints(NameContains=name)["Endpoints"]] == []


def test_endpoints_come_back_in_service_after_a_restart(own_server: SalviaServer) -> None:
    pytest.importorskip("salvia.serving.model_server")
    name = deploy(own_server, {"factor.txt": b"3", "code/inference.py": HANDLERS.encode()})
    own_server.restart()
    sm = own_server.client()
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    runtime = own_server.client("sagemaker-runtime")
    deadline = time.monotonic() + 30
    while True:
        try:
            response = runtime.invoke_endpoint(
                EndpointName=name, ContentType="application/json", Body=b'{"values": [2]}'
            )
            break
        except ClientError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert json.loads(response["Body"].read())["scaled"] == [6.0]
    sm.delete_endpoint(EndpointName=name)


@pytest.mark.one_backend  # instances started and stopped; the store path is tested
def test_update_weights_and_capacities(server: SalviaServer, runtime: Any) -> None:
    sm = server.client()
    name = deploy(
        server,
        {"factor.txt": b"1", "code/inference.py": HANDLERS.encode()},
        variants=[("Blue", 0.5), ("Green", 0.5)],
    )
    arn = sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[
            {"VariantName": "Blue", "DesiredWeight": 0.0},
            {"VariantName": "Green", "DesiredWeight": 1.0, "DesiredInstanceCount": 2},
        ],
    )["EndpointArn"]
    assert arn.endswith(f"endpoint/{name}")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    variants = {
        v["VariantName"]: v for v in sm.describe_endpoint(EndpointName=name)["ProductionVariants"]
    }
    assert variants["Green"]["CurrentInstanceCount"] == 2
    assert variants["Blue"]["CurrentWeight"] == 0.0
    served = Counter(
        runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=b'{"values": [1]}'
        )["InvokedProductionVariant"]
        for _ in range(50)
    )
    assert served == Counter({"Green": 50})
    with pytest.raises(ClientError) as excinfo:
        sm.update_endpoint_weights_and_capacities(
            EndpointName=name,
            DesiredWeightsAndCapacities=[{"VariantName": "Purple", "DesiredWeight": 1.0}],
        )
    assert excinfo.value.response["Error"]["Code"] == "ValidationException"
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "Green", "DesiredInstanceCount": 1}],
    )
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    variants = {
        v["VariantName"]: v for v in sm.describe_endpoint(EndpointName=name)["ProductionVariants"]
    }
    assert variants["Green"]["CurrentInstanceCount"] == 1
    sm.delete_endpoint(EndpointName=name)


def test_data_capture_writes_sagemaker_json_lines(server: SalviaServer, runtime: Any) -> None:
    sm, s3 = server.client(), server.client("s3")
    name = unique("cap")
    if "hosting" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="hosting")
    s3.put_object(
        Bucket="hosting",
        Key=f"{name}/model.tar.gz",
        Body=archive({"factor.txt": b"2", "code/inference.py": HANDLERS.encode()}),
    )
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": SKLEARN_IMAGE,
            "ModelDataUrl": f"s3://hosting/{name}/model.tar.gz",
        },
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
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://hosting/capture-{name}",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    assert sm.describe_endpoint(EndpointName=name)["DataCaptureConfig"] == {
        "EnableCapture": True,
        "CaptureStatus": "Started",
        "CurrentSamplingPercentage": 100,
        "DestinationS3Uri": f"s3://hosting/capture-{name}",
    }
    bodies = [json.dumps({"values": [i]}) for i in range(5)]
    for i, body in enumerate(bodies):
        runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=body, InferenceId=f"call-{i}"
        )
    deadline = time.monotonic() + 15
    records: list[dict[str, Any]] = []
    while len(records) < 5:
        assert time.monotonic() < deadline, records
        time.sleep(0.5)
        listed = s3.list_objects_v2(Bucket="hosting", Prefix=f"capture-{name}/{name}/AllTraffic/")
        records = [
            json.loads(line)
            for item in listed.get("Contents", [])
            for line in s3.get_object(Bucket="hosting", Key=item["Key"])["Body"].read().splitlines()
        ]
    by_id = {r["eventMetadata"]["inferenceId"]: r for r in records}
    for i, body in enumerate(bodies):
        record = by_id[f"call-{i}"]
        assert record["eventVersion"] == "0"
        captured = record["captureData"]
        assert captured["endpointInput"] == {
            "observedContentType": "application/json",
            "mode": "INPUT",
            "data": body,
            "encoding": "JSON",
        }
        assert json.loads(captured["endpointOutput"]["data"])["scaled"] == [2.0 * i]
    sm.delete_endpoint(EndpointName=name)


def test_blue_green_update_moves_traffic_or_rolls_back(server: SalviaServer, runtime: Any) -> None:
    sm, s3 = server.client(), server.client("s3")
    name = deploy(server, {"factor.txt": b"1", "code/inference.py": HANDLERS.encode()})

    def config_for(label: str, files: dict[str, bytes]) -> str:
        model = f"{name}-{label}"
        s3.put_object(Bucket="hosting", Key=f"{model}/model.tar.gz", Body=archive(files))
        sm.create_model(
            ModelName=model,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": SKLEARN_IMAGE,
                "ModelDataUrl": f"s3://hosting/{model}/model.tar.gz",
            },
        )
        sm.create_endpoint_config(
            EndpointConfigName=model,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                }
            ],
        )
        return model

    def scaled() -> list[float]:
        response = runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=b'{"values": [1]}'
        )
        return list(json.loads(response["Body"].read())["scaled"])

    def settle() -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while (found := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Updating":
            assert time.monotonic() < deadline
            assert scaled() == [1.0]  # the old fleet serves throughout
            time.sleep(0.1)
        return dict(found)

    broken = config_for(
        "broken",
        {"code/inference.py": b"def model_fn(d):\n    raise RuntimeError('bad weights')\n"},
    )
    sm.update_endpoint(EndpointName=name, EndpointConfigName=broken)
    rolled_back = settle()
    assert rolled_back["EndpointStatus"] == "InService"
    assert rolled_back["EndpointConfigName"] == name
    assert (
        "rolled back" in rolled_back["FailureReason"]
        and "bad weights" in rolled_back["FailureReason"]
    )
    assert scaled() == [1.0]

    good = config_for("v2", {"factor.txt": b"4", "code/inference.py": HANDLERS.encode()})
    sm.update_endpoint(EndpointName=name, EndpointConfigName=good)
    deadline = time.monotonic() + 120
    while sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Updating":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    updated = sm.describe_endpoint(EndpointName=name)
    assert updated["EndpointConfigName"] == good and "FailureReason" not in updated
    assert scaled() == [4.0]
    sm.delete_endpoint(EndpointName=name)


def test_shadow_variants_get_copies_whose_answers_are_never_returned(
    server: SalviaServer, runtime: Any
) -> None:
    sm, s3 = server.client(), server.client("s3")
    name = unique("shadow")
    if "hosting" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="hosting")
    for label, factor in (("prod", b"1"), ("shadow", b"100")):
        s3.put_object(
            Bucket="hosting",
            Key=f"{name}-{label}/model.tar.gz",
            Body=archive({"factor.txt": factor, "code/inference.py": HANDLERS.encode()}),
        )
        sm.create_model(
            ModelName=f"{name}-{label}",
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": SKLEARN_IMAGE,
                "ModelDataUrl": f"s3://hosting/{name}-{label}/model.tar.gz",
            },
        )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "Prod",
                "ModelName": f"{name}-prod",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
        ShadowProductionVariants=[
            {
                "VariantName": "Shadow",
                "ModelName": f"{name}-shadow",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "InitialVariantWeight": 1.0,
            }
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://hosting/capture-{name}",
            "CaptureOptions": [{"CaptureMode": "Output"}],
        },
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    assert (
        sm.describe_endpoint(EndpointName=name)["ShadowProductionVariants"][0]["VariantName"]
        == "Shadow"
    )
    for _ in range(10):
        response = runtime.invoke_endpoint(
            EndpointName=name, ContentType="application/json", Body=b'{"values": [1]}'
        )
        assert response["InvokedProductionVariant"] == "Prod"
        assert json.loads(response["Body"].read())["scaled"] == [1.0]  # never the shadow's
    deadline = time.monotonic() + 15
    while True:
        listed = s3.list_objects_v2(Bucket="hosting", Prefix=f"capture-{name}/{name}/Shadow/")
        outputs = [
            json.loads(line)["captureData"]["endpointOutput"]["data"]
            for item in listed.get("Contents", [])
            for line in s3.get_object(Bucket="hosting", Key=item["Key"])["Body"].read().splitlines()
        ]
        if len(outputs) >= 10:
            break
        assert time.monotonic() < deadline, outputs
        time.sleep(0.5)
    assert all(json.loads(o)["scaled"] == [100.0] for o in outputs)  # recorded, not returned
    sm.delete_endpoint(EndpointName=name)
