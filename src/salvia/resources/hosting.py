"""Models, endpoint configs and endpoints: the hosting resources behind `model.deploy()`.

Messages follow SageMaker's, which the SDK matches: "Could not find model ..." on a missing
model or endpoint config, "Cannot create already existing model ..." on a duplicate.
"""

from __future__ import annotations

from typing import Any

from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.errors import AlreadyExists, NotImplementedOperation, ValidationException
from salvia.resources.common import ResourceContext, list_page, list_query, name_from, tag_pairs
from salvia.resources.model_registry import resolve_container
from salvia.resources.registry import operation
from salvia.serving.engine import ENDPOINT, ENDPOINT_CONFIG, EndpointEngine
from salvia.serving.instances import MODEL
from salvia.store.metadata import Record

_NAMES = {MODEL: "model", ENDPOINT_CONFIG: "endpoint configuration", ENDPOINT: "endpoint"}


class Hosting:
    def __init__(self, ctx: ResourceContext, engine: EndpointEngine) -> None:
        self.ctx = ctx
        self.engine = engine

    def _get(self, kind: str, name: str) -> Record:
        record = self.ctx.store.get(kind, name_from(name, kind))
        if record is None:
            arn = self.ctx.arn(kind, name_from(name, kind))
            raise ValidationException(f'Could not find {_NAMES[kind]} "{arn}".')
        return record

    def _create(
        self,
        kind: str,
        name: str,
        body: dict[str, Any],
        arn_member: str,
        tags: Any,
        status: str | None = None,
    ) -> Record:
        record = self.ctx.new_record(kind, name, body, arn_member=arn_member, status=status)
        try:
            return self.ctx.store.create(record, tag_pairs(tags))
        except AlreadyExists:
            raise ValidationException(
                f'Cannot create already existing {_NAMES[kind]} "{record.arn}".'
            ) from None

    @staticmethod
    def _describe(record: Record) -> dict[str, Any]:
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }

    # --- models -----------------------------------------------------------------------------

    @operation("CreateModel")
    def create_model(self, request: dict[str, Any]) -> dict[str, Any]:
        containers = request.get("Containers") or []
        primary = request.get("PrimaryContainer")
        if not primary and not containers:
            raise ValidationException("Either PrimaryContainer or Containers must be given.")
        if primary and containers:
            raise ValidationException("Give either PrimaryContainer or Containers, not both.")
        # a registered model version (ModelPackageName) deploys its package's inference container
        if primary:
            primary = request["PrimaryContainer"] = resolve_container(self.ctx, primary)
        if containers:
            containers = [resolve_container(self.ctx, c) for c in containers]
            request["Containers"] = containers
        for container in [primary] if primary else containers:
            if not container.get("Image"):
                raise ValidationException("The container's Image is required.")
            if container.get("Mode") == "MultiModel" and len(containers) > 1:
                raise ValidationException(
                    "MultiModel mode is not supported for inference pipelines (Containers)."
                )
            if container.get("Mode") == "MultiModel" and not container.get("ModelDataUrl"):
                raise ValidationException(
                    "A MultiModel container needs a ModelDataUrl: the prefix of its models."
                )
            self.engine.ctx.runtimes.resolve(container["Image"])  # unknown images fail now
        hostnames = [c["ContainerHostname"] for c in containers if c.get("ContainerHostname")]
        if len(set(hostnames)) != len(hostnames):
            raise ValidationException("Containers must have distinct ContainerHostname values.")
        direct = (request.get("InferenceExecutionConfig") or {}).get("Mode") == "Direct"
        if direct and len(hostnames) != len(containers):
            raise ValidationException(
                "InferenceExecutionConfig Mode Direct needs a ContainerHostname on every container."
            )
        body = {k: v for k, v in request.items() if k not in {"Tags"} and v is not None}
        record = self._create(MODEL, request["ModelName"], body, "ModelArn", request.get("Tags"))
        return {"ModelArn": record.arn}

    @operation("DescribeModel")
    def describe_model(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self._get(MODEL, request["ModelName"]))

    @operation("ListModels")
    def list_models(self, request: dict[str, Any]) -> dict[str, Any]:
        return list_page(
            self.ctx,
            list_query(MODEL, request),
            "Models",
            lambda r: {"ModelName": r.name, "ModelArn": r.arn, "CreationTime": r.creation_time},
        )

    @operation("DeleteModel")
    def delete_model(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(MODEL, request["ModelName"])
        self.ctx.store.delete(MODEL, record.name)
        return {}

    # --- endpoint configs -------------------------------------------------------------------

    @operation("CreateEndpointConfig")
    def create_endpoint_config(self, request: dict[str, Any]) -> dict[str, Any]:
        variants = request["ProductionVariants"]
        names = [v["VariantName"] for v in variants]
        if len(set(names)) != len(names):
            raise ValidationException("ProductionVariants must have distinct VariantNames.")
        for variant in variants:
            self._get(MODEL, variant["ModelName"])
            variant.setdefault("InitialVariantWeight", 1.0)
            if variant.get("ServerlessConfig"):
                _check_serverless(variant)
                continue
            lookup_instance_type(variant.get("InstanceType") or "local")
            variant.setdefault("InitialInstanceCount", 1)
        shadows = request.get("ShadowProductionVariants") or []
        for variant in shadows:
            self._get(MODEL, variant["ModelName"])
            lookup_instance_type(variant.get("InstanceType") or "local")
            variant.setdefault("InitialVariantWeight", 1.0)
            variant.setdefault("InitialInstanceCount", 1)
        all_names = names + [v["VariantName"] for v in shadows]
        if len(set(all_names)) != len(all_names):
            raise ValidationException("Shadow variants need VariantNames of their own.")
        asynchronous = request.get("AsyncInferenceConfig")
        if asynchronous is not None:
            output = asynchronous.get("OutputConfig") or {}
            for member in ("S3OutputPath", "S3FailurePath"):
                uri = output.get(member)
                if (member == "S3OutputPath" or uri) and not str(uri or "").startswith("s3://"):
                    raise ValidationException(
                        f"AsyncInferenceConfig.OutputConfig.{member} must be an s3:// URI."
                    )
        body = {k: v for k, v in request.items() if k not in {"Tags"} and v is not None}
        record = self._create(
            ENDPOINT_CONFIG,
            request["EndpointConfigName"],
            body,
            "EndpointConfigArn",
            request.get("Tags"),
        )
        return {"EndpointConfigArn": record.arn}

    @operation("DescribeEndpointConfig")
    def describe_endpoint_config(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self._get(ENDPOINT_CONFIG, request["EndpointConfigName"]))

    @operation("ListEndpointConfigs")
    def list_endpoint_configs(self, request: dict[str, Any]) -> dict[str, Any]:
        return list_page(
            self.ctx,
            list_query(ENDPOINT_CONFIG, request),
            "EndpointConfigs",
            lambda r: {
                "EndpointConfigName": r.name,
                "EndpointConfigArn": r.arn,
                "CreationTime": r.creation_time,
            },
        )

    @operation("DeleteEndpointConfig")
    def delete_endpoint_config(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(ENDPOINT_CONFIG, request["EndpointConfigName"])
        self.ctx.store.delete(ENDPOINT_CONFIG, record.name)
        return {}

    # --- endpoints --------------------------------------------------------------------------

    @operation("CreateEndpoint")
    def create_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        config = self._get(ENDPOINT_CONFIG, request["EndpointConfigName"])
        variants = [_variant_summary(v) for v in config.body["ProductionVariants"]]
        body = {
            "EndpointName": request["EndpointName"],
            "EndpointConfigName": config.name,
            "EndpointStatus": "Creating",
            "ProductionVariants": variants,
        }
        shadows = config.body.get("ShadowProductionVariants") or []
        if shadows:
            body["ShadowProductionVariants"] = [
                {
                    "VariantName": v["VariantName"],
                    "DesiredWeight": v.get("InitialVariantWeight", 1.0),
                    "DesiredInstanceCount": v.get("InitialInstanceCount", 1),
                    "CurrentWeight": v.get("InitialVariantWeight", 1.0),
                    "CurrentInstanceCount": v.get("InitialInstanceCount", 1),
                }
                for v in shadows
            ]
        record = self._create(
            ENDPOINT,
            request["EndpointName"],
            body,
            "EndpointArn",
            request.get("Tags"),
            status="Creating",
        )
        self.engine.deploy(record.name)
        return {"EndpointArn": record.arn}

    @operation("DescribeEndpoint")
    def describe_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(ENDPOINT, request["EndpointName"])
        described = self._describe(record)
        config = self.ctx.store.get(ENDPOINT_CONFIG, record.body.get("EndpointConfigName", ""))
        capture = (config.body.get("DataCaptureConfig") if config else None) or {}
        if capture:  # SageMaker's DataCaptureConfigSummary of the configuration in service
            enabled = capture.get("EnableCapture", True)
            described["DataCaptureConfig"] = {
                "EnableCapture": enabled,
                "CaptureStatus": "Started" if enabled else "Stopped",
                "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage"),
                "DestinationS3Uri": capture.get("DestinationS3Uri"),
                "KmsKeyId": capture.get("KmsKeyId"),
            }
        return described

    @operation("ListEndpoints")
    def list_endpoints(self, request: dict[str, Any]) -> dict[str, Any]:
        return list_page(
            self.ctx,
            list_query(ENDPOINT, request),
            "Endpoints",
            lambda r: {
                "EndpointName": r.name,
                "EndpointArn": r.arn,
                "CreationTime": r.creation_time,
                "LastModifiedTime": r.last_modified_time,
                "EndpointStatus": r.body.get("EndpointStatus"),
            },
        )

    @operation("UpdateEndpoint")
    def update_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(ENDPOINT, request["EndpointName"])
        config = self._get(ENDPOINT_CONFIG, request["EndpointConfigName"])
        status = record.body.get("EndpointStatus")
        if status != "InService":
            raise ValidationException(
                f"Cannot update endpoint {record.arn}: it is {status}, not InService."
            )
        for unsupported in (
            "DeploymentConfig",
            "RetainAllVariantProperties",
            "ExcludeRetainedVariantProperties",
        ):
            if request.get(unsupported):
                raise NotImplementedOperation(
                    "UpdateEndpoint", detail=f"{unsupported} is not implemented by Salvia yet."
                )

        def updating(endpoint: Record) -> None:
            endpoint.body["EndpointStatus"] = "Updating"
            endpoint.status = "Updating"

        self.ctx.store.update(ENDPOINT, record.name, updating, self.ctx.clock.now())
        self.engine.update(record.name, config.name)
        return {"EndpointArn": record.arn}

    @operation("UpdateEndpointWeightsAndCapacities")
    def update_endpoint_weights_and_capacities(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(ENDPOINT, request["EndpointName"])
        status = record.body.get("EndpointStatus")
        if status != "InService":
            raise ValidationException(
                f"Cannot update endpoint {record.arn}: it is {status}, not InService."
            )
        names = {v["VariantName"] for v in record.body.get("ProductionVariants", [])}
        for change in request["DesiredWeightsAndCapacities"]:
            if change["VariantName"] not in names:
                raise ValidationException(
                    f"The variant {change['VariantName']} is not part of endpoint {record.name}."
                )
            if change.get("ServerlessUpdateConfig"):
                raise NotImplementedOperation(
                    "UpdateEndpointWeightsAndCapacities",
                    detail="Serverless variants are not implemented by Salvia yet.",
                )

        def updating(endpoint: Record) -> None:
            endpoint.body["EndpointStatus"] = "Updating"
            endpoint.status = "Updating"

        self.ctx.store.update(ENDPOINT, record.name, updating, self.ctx.clock.now())
        self.engine.rescale(record.name, request["DesiredWeightsAndCapacities"])
        return {"EndpointArn": record.arn}

    @operation("DeleteEndpoint")
    def delete_endpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(ENDPOINT, request["EndpointName"])

        def deleting(endpoint: Record) -> None:
            endpoint.body["EndpointStatus"] = "Deleting"
            endpoint.status = "Deleting"

        self.ctx.store.update(ENDPOINT, record.name, deleting, self.ctx.clock.now())
        self.engine.delete(record.name)
        return {}


_SERVERLESS_MEMORY = (1024, 2048, 3072, 4096, 5120, 6144)


def _check_serverless(variant: dict[str, Any]) -> None:
    config = variant["ServerlessConfig"]
    name = variant["VariantName"]
    if variant.get("InstanceType") or variant.get("InitialInstanceCount"):
        raise ValidationException(
            f"Variant {name}: a serverless variant takes no InstanceType or InitialInstanceCount."
        )
    if config.get("MemorySizeInMB") not in _SERVERLESS_MEMORY:
        raise ValidationException(
            f"Variant {name}: ServerlessConfig.MemorySizeInMB must be one of "
            f"{', '.join(map(str, _SERVERLESS_MEMORY))}."
        )
    provisioned = config.get("ProvisionedConcurrency") or 0
    if provisioned > config["MaxConcurrency"]:
        raise ValidationException(
            f"Variant {name}: ServerlessConfig.ProvisionedConcurrency ({provisioned}) cannot "
            f"exceed MaxConcurrency ({config['MaxConcurrency']})."
        )


def _variant_summary(variant: dict[str, Any]) -> dict[str, Any]:
    """A production variant as DescribeEndpoint shows it while the endpoint is created."""
    summary: dict[str, Any] = {
        "VariantName": variant["VariantName"],
        "DesiredWeight": variant.get("InitialVariantWeight", 1.0),
        "CurrentWeight": 0.0,
        "CurrentInstanceCount": 0,
        "VariantStatus": [{"Status": "Creating"}],
    }
    serverless = variant.get("ServerlessConfig")
    if serverless:  # instances come and go with requests: the count is what runs now
        summary["DesiredInstanceCount"] = serverless.get("ProvisionedConcurrency", 0)
        summary["CurrentServerlessConfig"] = serverless
        summary["DesiredServerlessConfig"] = serverless
    else:
        summary["DesiredInstanceCount"] = variant.get("InitialInstanceCount", 1)
    return summary
