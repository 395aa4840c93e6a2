"""Application Auto Scaling for SageMaker variants: scalable targets, target-tracking policies
and the activities the autoscaler records (`salvia.serving.autoscaler` acts on them).

Only what SageMaker variants use is supported: ServiceNamespace `sagemaker`, ScalableDimension
`sagemaker:variant:DesiredInstanceCount`, ResourceId `endpoint/<endpoint>/variant/<variant>`, and
target tracking on `SageMakerVariantInvocationsPerInstance`. Errors carry this service's codes
(`ValidationException`, `ObjectNotFoundException`, `InvalidNextTokenException`) and messages
modelled on its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from salvia.errors import (
    AlreadyExists,
    InvalidNextTokenException,
    NotImplementedOperation,
    ObjectNotFoundException,
    ValidationException,
)
from salvia.resources.common import ResourceContext, tag_pairs
from salvia.resources.registry import operation
from salvia.serving.autoscaler import (
    ACTIVITY,
    DIMENSION,
    METRIC,
    NAMESPACE,
    POLICY,
    TARGET,
    parse_resource_id,
    records,
    target_key,
)
from salvia.serving.engine import ENDPOINT, ENDPOINT_CONFIG
from salvia.store.metadata import Record

SERVICE = "Application Auto Scaling"
MAX_RESULTS = 50
# the service-linked role AWS uses for SageMaker variants when RoleARN is not given
SERVICE_ROLE = (
    "role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if not k.startswith("_")}


def _policy_name_key(resource_id: str, policy_name: str) -> str:
    # a policy is named by its target and its name, which together exceed the name column
    return hashlib.sha256(f"{target_key(resource_id)}\n{policy_name}".encode()).hexdigest()


class AutoScaling:
    def __init__(self, ctx: ResourceContext) -> None:
        self.ctx = ctx

    # --- checks at the edge -----------------------------------------------------------------

    @staticmethod
    def _namespace(request: dict[str, Any]) -> None:
        namespace = request["ServiceNamespace"]
        if namespace != NAMESPACE:
            raise ValidationException(
                f"Unsupported service namespace '{namespace}': Salvia supports only "
                f"'{NAMESPACE}' (SageMaker endpoint variants)."
            )
        dimension = request.get("ScalableDimension")
        if dimension is not None and dimension != DIMENSION:
            raise ValidationException(
                f"Unsupported scalable dimension '{dimension}': Salvia supports only '{DIMENSION}'."
            )

    def _resource(self, request: dict[str, Any]) -> tuple[str, str, str]:
        """(resource id, endpoint, variant) of a request naming one scalable target."""
        self._namespace(request)
        resource_id = request["ResourceId"]
        parsed = parse_resource_id(resource_id)
        if parsed is None:
            raise ValidationException(
                f"Unsupported resource ID '{resource_id}': Salvia supports "
                "'endpoint/<endpoint-name>/variant/<variant-name>'."
            )
        return resource_id, *parsed

    def _target(self, resource_id: str) -> Record:
        record = self.ctx.store.get(TARGET, target_key(resource_id))
        if record is None:
            raise ObjectNotFoundException(
                f"No scalable target registered for service namespace: {NAMESPACE}, resource "
                f"ID: {resource_id}, scalable dimension: {DIMENSION}"
            )
        return record

    @staticmethod
    def _capacity(request: dict[str, Any], member: str, floor: int = 1) -> int | None:
        value = request.get(member)
        if value is not None and value < floor:
            kind = "an asynchronous" if floor == 0 else "a real-time"
            raise ValidationException(
                f"{member} must be at least {floor} for {kind} SageMaker variant, got {value}."
            )
        return value

    def _is_async(self, endpoint: Record) -> bool:
        config = self.ctx.store.get(ENDPOINT_CONFIG, endpoint.body.get("EndpointConfigName", ""))
        return bool(config and config.body.get("AsyncInferenceConfig"))

    # --- scalable targets -------------------------------------------------------------------

    @operation("RegisterScalableTarget")
    def register_scalable_target(self, request: dict[str, Any]) -> dict[str, Any]:
        resource_id, endpoint_name, variant = self._resource(request)
        endpoint = self.ctx.store.get(ENDPOINT, endpoint_name)
        if endpoint is None:
            raise ValidationException(f"Endpoint {endpoint_name} does not exist.")
        if variant not in {v["VariantName"] for v in endpoint.body.get("ProductionVariants", [])}:
            raise ValidationException(
                f"The variant {variant} is not a production variant of endpoint {endpoint_name}."
            )
        # an asynchronous endpoint may scale to zero instances while its queue is empty
        minimum = self._capacity(request, "MinCapacity", 0 if self._is_async(endpoint) else 1)
        maximum = self._capacity(request, "MaxCapacity")
        changes: dict[str, Any] = {
            k: request[k] for k in ("MinCapacity", "MaxCapacity", "SuspendedState") if k in request
        }
        if request.get("RoleARN"):
            changes["RoleARN"] = request["RoleARN"]
        existing = self.ctx.store.get(TARGET, target_key(resource_id))
        if existing is None:
            if minimum is None or maximum is None:
                raise ValidationException(
                    "MinCapacity and MaxCapacity are required to register a new scalable target."
                )
            self._bounds(minimum, maximum)
            return {"ScalableTargetARN": self._create_target(resource_id, changes, request)}

        def update(record: Record) -> None:
            merged = {**record.body, **changes}
            self._bounds(merged["MinCapacity"], merged["MaxCapacity"])
            record.body = merged

        record = self.ctx.store.update(TARGET, existing.name, update, self.ctx.clock.now())
        if record is None:
            return self.register_scalable_target(request)  # deregistered meanwhile: anew
        if request.get("Tags"):
            self.ctx.store.set_tags(record.arn, tag_pairs(self._tags(request)))
        return {"ScalableTargetARN": record.arn}

    @staticmethod
    def _bounds(minimum: int, maximum: int) -> None:
        if minimum > maximum:
            raise ValidationException(
                f"Minimum capacity {minimum} cannot be greater than maximum capacity {maximum}."
            )

    @staticmethod
    def _tags(request: dict[str, Any]) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in (request.get("Tags") or {}).items()]

    def _create_target(self, resource_id: str, changes: dict[str, Any], request: Any) -> str:
        now = self.ctx.clock.now()
        settings = self.ctx.settings
        arn = (
            f"arn:aws:application-autoscaling:{settings.region}:{settings.account_id}:"
            f"scalable-target/{uuid.uuid4().hex}{uuid.uuid4().hex[:4]}"
        )
        body = {
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource_id,
            "ScalableDimension": DIMENSION,
            "RoleARN": f"arn:aws:iam::{settings.account_id}:{SERVICE_ROLE}",
            **changes,
            "ScalableTargetARN": arn,
        }
        record = Record(TARGET, target_key(resource_id), arn, now, now, body)
        try:
            self.ctx.store.create(record, tag_pairs(self._tags(request)))
        except AlreadyExists:
            # registered by a concurrent call: register is an upsert, so this one updates it
            return str(self.register_scalable_target(request)["ScalableTargetARN"])
        return arn

    @operation("DescribeScalableTargets")
    def describe_scalable_targets(self, request: dict[str, Any]) -> dict[str, Any]:
        self._namespace(request)
        wanted = {target_key(r) for r in request.get("ResourceIds") or []}
        found = [
            {**_public(r.body), "CreationTime": r.creation_time}
            for r in records(self.ctx.store, TARGET)
            if not wanted or r.name_key in wanted
        ]
        return _paginate(found, request, "ScalableTargets", sorted(wanted))

    @operation("DeregisterScalableTarget")
    def deregister_scalable_target(self, request: dict[str, Any]) -> dict[str, Any]:
        resource_id, _, _ = self._resource(request)
        target = self._target(resource_id)
        # deregistering deletes the target's policies, as on AWS; its activities stay readable
        for policy in list(records(self.ctx.store, POLICY, parent=target.name_key)):
            self.ctx.store.delete(POLICY, policy.name)
        self.ctx.store.delete(TARGET, target.name)
        return {}

    # --- scaling policies -------------------------------------------------------------------

    @operation("PutScalingPolicy")
    def put_scaling_policy(self, request: dict[str, Any]) -> dict[str, Any]:
        resource_id, _, _ = self._resource(request)
        policy_type = request.get("PolicyType", "StepScaling")  # AWS's default type
        if policy_type != "TargetTrackingScaling":
            raise NotImplementedOperation(
                "PutScalingPolicy",
                SERVICE,
                detail=f"{policy_type} policies are not implemented by Salvia yet; use PolicyType "
                f"TargetTrackingScaling with the predefined metric {METRIC}.",
            )
        config = request.get("TargetTrackingScalingPolicyConfiguration")
        if config is None:
            raise ValidationException(
                "TargetTrackingScalingPolicyConfiguration is required for a "
                "TargetTrackingScaling policy."
            )
        self._check_target_tracking(config)
        target = self._target(resource_id)
        name = request["PolicyName"]
        body = {
            "PolicyName": name,
            "ServiceNamespace": NAMESPACE,
            "ResourceId": target.body["ResourceId"],
            "ScalableDimension": DIMENSION,
            "PolicyType": policy_type,
            "TargetTrackingScalingPolicyConfiguration": config,
        }
        key = _policy_name_key(resource_id, name)

        def replace(record: Record) -> None:  # PutScalingPolicy updates a policy of that name
            record.body = {**body, "PolicyARN": record.body["PolicyARN"]}

        now = self.ctx.clock.now()
        record = self.ctx.store.update(POLICY, key, replace, now)
        if record is None:
            settings = self.ctx.settings
            arn = (
                f"arn:aws:autoscaling:{settings.region}:{settings.account_id}:scalingPolicy:"
                f"{uuid.uuid4()}:resource/{NAMESPACE}/{target.body['ResourceId']}:"
                f"policyName/{name}"
            )
            record = Record(
                POLICY, key, arn, now, now, {**body, "PolicyARN": arn}, parent=target.name_key
            )
            try:
                self.ctx.store.create(record)
            except AlreadyExists:  # put concurrently by another call: this one replaces it
                return self.put_scaling_policy(request)
        # target tracking on AWS creates CloudWatch alarms; Salvia's loop measures directly
        return {"PolicyARN": record.arn, "Alarms": []}

    @staticmethod
    def _check_target_tracking(config: dict[str, Any]) -> None:
        if config.get("CustomizedMetricSpecification"):
            raise NotImplementedOperation(
                "PutScalingPolicy",
                SERVICE,
                detail="CustomizedMetricSpecification is not implemented by Salvia yet; use "
                f"PredefinedMetricSpecification with {METRIC}.",
            )
        predefined = config.get("PredefinedMetricSpecification")
        if predefined is None:
            raise ValidationException(
                "A target tracking policy needs a PredefinedMetricSpecification "
                f"(Salvia supports {METRIC})."
            )
        metric = predefined["PredefinedMetricType"]
        if metric != METRIC:
            if metric.startswith("SageMaker"):
                raise NotImplementedOperation(
                    "PutScalingPolicy",
                    SERVICE,
                    detail=f"The predefined metric {metric} is not implemented by Salvia yet; "
                    f"it supports {METRIC}.",
                )
            raise ValidationException(
                f"The predefined metric {metric} does not apply to {DIMENSION}; "
                f"Salvia supports {METRIC}."
            )
        value = config["TargetValue"]
        if not math.isfinite(value) or value <= 0:
            raise ValidationException(f"TargetValue must be a positive number, got {value}.")
        for member in ("ScaleOutCooldown", "ScaleInCooldown"):
            if config.get(member, 0) < 0:
                raise ValidationException(f"{member} must be 0 or more, got {config[member]}.")

    @operation("DescribeScalingPolicies")
    def describe_scaling_policies(self, request: dict[str, Any]) -> dict[str, Any]:
        self._namespace(request)
        names = set(request.get("PolicyNames") or [])
        resource = request.get("ResourceId")
        parent = target_key(resource) if resource else None
        found = [
            {**_public(r.body), "CreationTime": r.creation_time}
            for r in records(self.ctx.store, POLICY, parent=parent)
            if not names or r.body["PolicyName"] in names
        ]
        return _paginate(found, request, "ScalingPolicies", [sorted(names), parent])

    @operation("DeleteScalingPolicy")
    def delete_scaling_policy(self, request: dict[str, Any]) -> dict[str, Any]:
        resource_id, _, _ = self._resource(request)
        name = request["PolicyName"]
        if self.ctx.store.delete(POLICY, _policy_name_key(resource_id, name)) is None:
            raise ObjectNotFoundException(
                f"No scaling policy found for service namespace: {NAMESPACE}, resource ID: "
                f"{resource_id}, scalable dimension: {DIMENSION}, policy name: {name}"
            )
        return {}

    # --- activities -------------------------------------------------------------------------

    @operation("DescribeScalingActivities")
    def describe_scaling_activities(self, request: dict[str, Any]) -> dict[str, Any]:
        self._namespace(request)
        resource = request.get("ResourceId")
        parent = target_key(resource) if resource else None
        # newest first, as AWS lists them; only activities that scaled are recorded
        found = [_public(r.body) for r in records(self.ctx.store, ACTIVITY, parent=parent)]
        found.reverse()
        return _paginate(found, request, "ScalingActivities", [parent])


def _paginate(
    items: list[dict[str, Any]], request: dict[str, Any], key: str, filters: Iterable[Any]
) -> dict[str, Any]:
    """A page of `items` by offset; the token is tied to the filters that produced it."""
    limit = request.get("MaxResults") or MAX_RESULTS
    if not 1 <= limit <= MAX_RESULTS:
        raise ValidationException(f"MaxResults must be between 1 and {MAX_RESULTS}, got {limit}.")
    fingerprint = hashlib.sha256(orjson.dumps([key, list(filters)])).hexdigest()[:16]
    offset = 0
    if request.get("NextToken"):
        offset = _decode(request["NextToken"], fingerprint)
    response: dict[str, Any] = {key: items[offset : offset + limit]}
    if offset + limit < len(items):
        token = orjson.dumps({"o": offset + limit, "q": fingerprint})
        response["NextToken"] = base64.urlsafe_b64encode(token).decode().rstrip("=")
    return response


def _decode(token: str, fingerprint: str) -> int:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        data = None
    offset = data.get("o") if isinstance(data, dict) and data.get("q") == fingerprint else None
    if not isinstance(offset, int) or offset < 0:
        raise InvalidNextTokenException("The NextToken is invalid or does not match this request.")
    return offset
