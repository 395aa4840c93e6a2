"""Application Auto Scaling for endpoint variants through boto3's `application-autoscaling`
client: targets and target-tracking policies, and a variant that really scales out under load
and back in when the load stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_endpoints import HANDLERS, deploy
from tests.conftest import SalviaServer, fresh_database

DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
FILES = {"factor.txt": b"2", "code/inference.py": HANDLERS.encode()}


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as excinfo:
        call()
    return str(excinfo.value.response["Error"]["Code"])


def target_tracking(target_value: float, cooldown: int = 1) -> dict[str, Any]:
    return {
        "TargetValue": target_value,
        "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
        "ScaleOutCooldown": cooldown,
        "ScaleInCooldown": cooldown,
    }


def test_targets_policies_and_their_errors(server: SalviaServer) -> None:
    aas = server.client("application-autoscaling")
    name = deploy(server, FILES, wait=False)
    resource = f"endpoint/{name}/variant/AllTraffic"
    where = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource,
        "ScalableDimension": DIMENSION,
    }

    assert (
        error_code(
            lambda: aas.register_scalable_target(
                **{**where, "ServiceNamespace": "ecs"}, MinCapacity=1, MaxCapacity=2
            )
        )
        == "ValidationException"
    )
    assert (
        error_code(
            lambda: aas.register_scalable_target(
                **{**where, "ResourceId": f"endpoint/{name}/variant/Nope"},
                MinCapacity=1,
                MaxCapacity=2,
            )
        )
        == "ValidationException"
    )
    assert (
        error_code(lambda: aas.register_scalable_target(**where, MinCapacity=3, MaxCapacity=2))
        == "ValidationException"
    )
    policy = target_tracking(70.0, cooldown=300)
    assert (
        error_code(
            lambda: aas.put_scaling_policy(
                **where,
                PolicyName="p",
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration=policy,
            )
        )
        == "ObjectNotFoundException"
    )

    arn = aas.register_scalable_target(**where, MinCapacity=1, MaxCapacity=3)["ScalableTargetARN"]
    assert arn.startswith("arn:aws:application-autoscaling:us-east-1:123456789012:")
    # registering again updates the target in place
    assert aas.register_scalable_target(**where, MaxCapacity=4)["ScalableTargetARN"] == arn
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    assert target["ScalableDimension"] == DIMENSION and target["RoleARN"].startswith("arn:aws:iam")

    assert (
        error_code(lambda: aas.put_scaling_policy(**where, PolicyName="steps"))
        == "NotImplementedException"
    )
    custom = {"TargetValue": 1.0, "CustomizedMetricSpecification": {"MetricName": "x"}}
    assert (
        error_code(
            lambda: aas.put_scaling_policy(
                **where,
                PolicyName="custom",
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration=custom,
            )
        )
        == "NotImplementedException"
    )
    wrong = {
        **policy,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "ALBRequestCountPerTarget"},
    }
    assert (
        error_code(
            lambda: aas.put_scaling_policy(
                **where,
                PolicyName="wrong",
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration=wrong,
            )
        )
        == "ValidationException"
    )

    put = aas.put_scaling_policy(
        **where,
        PolicyName="invocations",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=policy,
    )
    assert put["PolicyARN"].startswith("arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:")
    assert put["PolicyARN"].endswith(f":resource/sagemaker/{resource}:policyName/invocations")
    again = aas.put_scaling_policy(
        **where,
        PolicyName="invocations",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={**policy, "TargetValue": 90.0},
    )
    assert again["PolicyARN"] == put["PolicyARN"]
    (described,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)[
        "ScalingPolicies"
    ]
    assert described["PolicyName"] == "invocations"
    assert described["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 90.0
    assert (
        error_code(
            lambda: aas.describe_scaling_policies(ServiceNamespace="sagemaker", NextToken="bogus")
        )
        == "InvalidNextTokenException"
    )

    assert (
        error_code(lambda: aas.delete_scaling_policy(**where, PolicyName="missing"))
        == "ObjectNotFoundException"
    )
    aas.delete_scaling_policy(**where, PolicyName="invocations")
    assert not aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)[
        "ScalingPolicies"
    ]
    aas.deregister_scalable_target(**where)
    assert error_code(lambda: aas.deregister_scalable_target(**where)) == "ObjectNotFoundException"
    assert not aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])[
        "ScalableTargets"
    ]
    server.client().delete_endpoint(EndpointName=name)


@pytest.fixture
def fast_autoscaling_server(backend: str, tmp_path: Path) -> Iterator[SalviaServer]:
    """A server of the test's own whose autoscaler passes every half second (a 6 s window)."""
    url, drop = fresh_database(backend)
    instance = SalviaServer(tmp_path / "home", url, env={"SALVIA_AUTOSCALING_PERIOD": "0.5"})
    instance.home.mkdir()
    instance.start()
    yield instance
    if instance.process is not None and instance.process.poll() is None:
        instance.stop()
    instance.stop_instances()
    drop()


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.mark.slow
@pytest.mark.one_backend  # load and instances; the policies' store path is tested above
def test_a_variant_scales_out_under_load_and_back_in(
    fast_autoscaling_server: SalviaServer,
) -> None:
    server = fast_autoscaling_server
    sm, aas = server.client(), server.client("application-autoscaling")
    name = deploy(server, FILES)
    resource = f"endpoint/{name}/variant/AllTraffic"
    where = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource,
        "ScalableDimension": DIMENSION,
    }
    aas.register_scalable_target(**where, MinCapacity=1, MaxCapacity=2)
    aas.put_scaling_policy(
        **where,
        PolicyName="invocations",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=target_tracking(30.0),  # 0.5 per second
    )

    def variant() -> dict[str, Any]:
        endpoint = sm.describe_endpoint(EndpointName=name)
        summary: dict[str, Any] = endpoint["ProductionVariants"][0]
        return {**summary, "EndpointStatus": endpoint["EndpointStatus"]}

    def settled_at(count: int) -> bool:
        now = variant()
        return now["EndpointStatus"] == "InService" and now["CurrentInstanceCount"] == count

    stop = threading.Event()
    deadline = time.monotonic() + 40  # the load ends by itself, whatever happens below

    def load() -> None:
        runtime = server.client("sagemaker-runtime")
        while not stop.is_set() and time.monotonic() < deadline:
            runtime.invoke_endpoint(
                EndpointName=name, ContentType="application/json", Body=b'{"values": [1]}'
            )
            time.sleep(0.02)

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: settled_at(2), 30, "a scale-out to 2 instances")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert variant()["DesiredInstanceCount"] == 2

    def activities() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = aas.describe_scaling_activities(
            ServiceNamespace="sagemaker", ResourceId=resource
        )["ScalingActivities"]
        return found

    wait_for(lambda: activities()[0]["StatusCode"] == "Successful", 10, "the activity to settle")
    scaled_out = activities()[0]
    assert scaled_out["Description"] == "Setting desired instance count to 2."
    assert "invocations" in scaled_out["Cause"] and scaled_out["EndTime"] >= scaled_out["StartTime"]

    wait_for(lambda: settled_at(1), 30, "a scale-in to 1 instance once the load stopped")
    assert variant()["DesiredInstanceCount"] == 1
    wait_for(lambda: activities()[0]["StatusCode"] == "Successful", 10, "the activity to settle")
    history = activities()
    assert [a["Description"] for a in history[:2]] == [
        "Setting desired instance count to 1.",
        "Setting desired instance count to 2.",
    ]
    first = aas.describe_scaling_activities(ServiceNamespace="sagemaker", MaxResults=1)
    second = aas.describe_scaling_activities(
        ServiceNamespace="sagemaker", MaxResults=1, NextToken=first["NextToken"]
    )
    assert [first["ScalingActivities"][0], second["ScalingActivities"][0]] == history[:2]

    aas.deregister_scalable_target(**where)
    assert not aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    sm.delete_endpoint(EndpointName=name)
