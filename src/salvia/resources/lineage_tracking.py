"""Lineage recorded automatically, as SageMaker records it, for work done through the API.

    DataSet artifact --ContributedTo--> training job's trial component --Produced--> Model artifact
    Model artifact --ContributedTo--> ModelPackage artifact --AssociatedWith--> ModelGroup context
    Model artifact, Image artifact, ModelPackage artifact --ContributedTo--> ModelDeployment action
    ModelDeployment action --ContributedTo--> Endpoint context
    ModelDeployment action, DataSet artifact --ContributedTo--> transform job's trial component
    transform job's trial component --Produced--> DataSet artifact (its output)
    DataSet, Image artifacts --ContributedTo--> processing job's trial component --Produced-->
        DataSet artifacts (its outputs)
    a tuning job's trial's component --AssociatedWith--> the tuning job's context

Entities that stand for one thing get deterministic names (an artifact is keyed by its type and
URI, so a training job's output and the model package that registers it meet in one vertex), and
every step is idempotent. Tracking is a by-product: a failure is logged, never returned.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from salvia.errors import AlreadyExists
from salvia.resources.experiments import TRIAL_COMPONENT
from salvia.resources.lineage import ACTION, ARTIFACT, CONTEXT, Lineage, user
from salvia.resources.registry import Handler
from salvia.store.metadata import Record

log = logging.getLogger(__name__)

_SUFFIX = {
    "SageMakerTrainingJob": "training-job",
    "SageMakerTransformJob": "transform-job",
    "SageMakerProcessingJob": "processing-job",
}


class LineageTracker:
    def __init__(self, lineage: Lineage) -> None:
        self.lineage = lineage
        self.ctx = lineage.ctx

    # --- get-or-create ----------------------------------------------------------------------

    def _get_or_create(self, record: Record) -> Record:
        try:
            return self.ctx.store.create(record)
        except AlreadyExists:
            existing = self.ctx.store.get(record.kind, record.name)
            if existing is None:  # deleted in between: try once more
                return self.ctx.store.create(record)
            return existing

    def artifact(self, uri: str, artifact_type: str, **properties: str) -> Record:
        key = hashlib.sha256(f"{artifact_type}\n{uri}".encode()).hexdigest()[:32]
        body: dict[str, Any] = {
            "Source": {"SourceUri": uri},
            "ArtifactType": artifact_type,
            "CreatedBy": user(self.ctx),
        }
        if properties:
            body["Properties"] = properties
        return self._get_or_create(
            self.ctx.new_record(ARTIFACT, key, body, arn_member="ArtifactArn")
        )

    def _entity(self, kind: str, name: str, uri: str, entity_type: str) -> Record:
        prefix = {ACTION: "Action", CONTEXT: "Context"}[kind]
        body: dict[str, Any] = {
            f"{prefix}Name": name,
            "Source": {"SourceUri": uri},
            f"{prefix}Type": entity_type,
            "CreatedBy": user(self.ctx),
        }
        if kind == ACTION:
            body["Status"] = "Completed"
        record = self.ctx.new_record(kind, name, body, arn_member=f"{prefix}Arn")
        return self._get_or_create(record)

    def _component(self, job: Record, source_type: str) -> Record:
        name = f"{job.name}-aws-{_SUFFIX[source_type]}"
        existing = self.ctx.store.get(TRIAL_COMPONENT, name)
        if existing is not None:
            return existing
        body = {
            "TrialComponentName": name,
            "DisplayName": name,
            "Source": {"SourceArn": job.arn, "SourceType": source_type},
            "Status": {"PrimaryStatus": job.status or "InProgress"},
            "Parameters": {},
            "InputArtifacts": {},
            "OutputArtifacts": {},
        }
        record = self.ctx.new_record(
            TRIAL_COMPONENT, name, body, arn_member="TrialComponentArn", parent=job.arn
        )
        return self._get_or_create(record)

    def _model_action(self, model: Record) -> Record:
        return self._entity(ACTION, f"{model.name}-aws-model", model.arn, "ModelDeployment")

    # --- what happened ----------------------------------------------------------------------

    def training_job_finished(self, job: Record) -> None:
        body = job.body
        component = self._component(job, "SageMakerTrainingJob")
        image = (body.get("AlgorithmSpecification") or {}).get("TrainingImage")
        if image:
            self.lineage.associate(self.artifact(image, "Image"), component, "ContributedTo")
        for channel in body.get("InputDataConfig") or []:
            uri = ((channel.get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
            if uri:
                dataset = self.artifact(uri, "DataSet", ChannelName=channel["ChannelName"])
                self.lineage.associate(dataset, component, "ContributedTo")
        model_data = (body.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if body.get("TrainingJobStatus") == "Completed" and model_data:
            self.lineage.associate(component, self.artifact(model_data, "Model"), "Produced")
        tuning_arn = body.get("TuningJobArn")
        if tuning_arn:  # a tuning job's trial: its component belongs to the tuning job
            tuning = tuning_arn.rsplit("/", 1)[1]
            context = self._entity(
                CONTEXT, f"{tuning}-aws-tuning-job", tuning_arn, "HyperParameterTuningJob"
            )
            self.lineage.associate(component, context, "AssociatedWith")

    def model_package_registered(self, package: Record) -> None:
        artifact = self.artifact(package.arn, "ModelPackage")
        for container in (package.body.get("InferenceSpecification") or {}).get("Containers", []):
            if container.get("ModelDataUrl"):
                data = self.artifact(container["ModelDataUrl"], "Model")
                self.lineage.associate(data, artifact, "ContributedTo")
        group_name = package.body.get("ModelPackageGroupName")
        if group_name:
            group_arn = self.ctx.arn("model-package-group", group_name)
            group = self._entity(
                CONTEXT, f"{group_name}-aws-model-package-group", group_arn, "ModelGroup"
            )
            self.lineage.associate(artifact, group, "AssociatedWith")

    def model_created(self, request: dict[str, Any]) -> None:
        model = self.ctx.store.get("model", request["ModelName"])
        if model is None:
            return
        action = self._model_action(model)
        primary = model.body.get("PrimaryContainer")
        for container in [primary] if primary else model.body.get("Containers") or []:
            if container.get("ModelPackageName"):
                package = self.ctx.store.get_by_arn(container["ModelPackageName"])
                uri = package.arn if package is not None else container["ModelPackageName"]
                source = self.artifact(uri, "ModelPackage")
                self.lineage.associate(source, action, "ContributedTo")
            if container.get("ModelDataUrl"):
                data = self.artifact(container["ModelDataUrl"], "Model")
                self.lineage.associate(data, action, "ContributedTo")
            if container.get("Image"):
                image = self.artifact(container["Image"], "Image")
                self.lineage.associate(image, action, "ContributedTo")

    def endpoint_deployed(self, request: dict[str, Any]) -> None:
        endpoint = self.ctx.store.get("endpoint", request["EndpointName"])
        config = self.ctx.store.get("endpoint-config", request["EndpointConfigName"])
        if endpoint is None or config is None:
            return
        context = self._entity(CONTEXT, f"{endpoint.name}-aws-endpoint", endpoint.arn, "Endpoint")
        for variant in config.body.get("ProductionVariants") or []:
            model = self.ctx.store.get("model", variant["ModelName"])
            if model is not None:
                self.lineage.associate(self._model_action(model), context, "ContributedTo")

    def transform_job_created(self, request: dict[str, Any]) -> None:
        job = self.ctx.store.get("transform-job", request["TransformJobName"])
        if job is None:
            return
        component = self._component(job, "SageMakerTransformJob")
        model = self.ctx.store.get("model", request["ModelName"])
        if model is not None:
            self.lineage.associate(self._model_action(model), component, "ContributedTo")
        source = (request.get("TransformInput") or {}).get("DataSource") or {}
        uri = (source.get("S3DataSource") or {}).get("S3Uri")
        if uri:
            self.lineage.associate(self.artifact(uri, "DataSet"), component, "ContributedTo")
        output = (request.get("TransformOutput") or {}).get("S3OutputPath")
        if output:
            self.lineage.associate(component, self.artifact(output, "DataSet"), "Produced")

    def processing_job_created(self, request: dict[str, Any]) -> None:
        job = self.ctx.store.get("processing-job", request["ProcessingJobName"])
        if job is None:
            return
        component = self._component(job, "SageMakerProcessingJob")
        image = (request.get("AppSpecification") or {}).get("ImageUri")
        if image:
            self.lineage.associate(self.artifact(image, "Image"), component, "ContributedTo")
        for item in request.get("ProcessingInputs") or []:
            uri = (item.get("S3Input") or {}).get("S3Uri")
            if uri:
                dataset = self.artifact(uri, "DataSet", InputName=item["InputName"])
                self.lineage.associate(dataset, component, "ContributedTo")
        for item in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
            uri = (item.get("S3Output") or {}).get("S3Uri")
            if uri:
                dataset = self.artifact(uri, "DataSet", OutputName=item["OutputName"])
                self.lineage.associate(component, dataset, "Produced")

    # --- wiring -----------------------------------------------------------------------------

    def observe(self, handlers: dict[str, Handler]) -> None:
        """Wrap the hosting and transform operations whose success leaves lineage behind."""
        hooks: dict[str, Callable[[dict[str, Any]], None]] = {
            "CreateModel": self.model_created,
            "CreateEndpoint": self.endpoint_deployed,
            "UpdateEndpoint": self.endpoint_deployed,
            "CreateTransformJob": self.transform_job_created,
            "CreateProcessingJob": self.processing_job_created,
        }
        for name, hook in hooks.items():
            if name in handlers:
                handlers[name] = _after(handlers[name], hook)

    def after_training(self, first: Callable[[Record], None]) -> Callable[[Record], None]:
        """A training engine `on_finished` hook: `first` (the job's own bookkeeping), then the
        job's lineage."""

        def finished(job: Record) -> None:
            first(job)
            _quietly(self.training_job_finished, job)

        return finished


def _quietly(hook: Callable[[Any], None], argument: Any) -> None:
    try:
        hook(argument)
    except Exception:  # lineage is a by-product: it never fails the work it records
        log.exception("recording lineage with %s failed", getattr(hook, "__name__", hook))


def _after(handler: Handler, hook: Callable[[dict[str, Any]], None]) -> Handler:
    @functools.wraps(handler)
    def run(request: dict[str, Any]) -> dict[str, Any]:
        response = handler(request)
        _quietly(hook, request)
        return response

    return run
