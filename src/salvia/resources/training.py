"""Training jobs: CreateTrainingJob, DescribeTrainingJob, ListTrainingJobs, StopTrainingJob.

The job's lifecycle runs in the training engine; this module checks a request once, records the
job, and answers for it. An `ExperimentConfig` gets the job its trial component
(`<job>-aws-training-job`), which receives the job's parameters, metrics and final status.
"""

from __future__ import annotations

import re
from typing import Any

from salvia.algorithms import registry as algorithms
from salvia.compute.channels import validate_channels
from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.errors import (
    AlreadyExists,
    NotImplementedOperation,
    ResourceInUse,
    ValidationException,
)
from salvia.resources.common import (
    ResourceContext,
    list_page,
    list_query,
    name_from,
    tag_list,
    tag_pairs,
)
from salvia.resources.experiments import IN_TRIAL, TRIAL, TRIAL_COMPONENT, Experiments
from salvia.resources.registry import operation
from salvia.resources.search import Document
from salvia.store.metadata import Record
from salvia.training.engine import KIND, TrainingEngine

_SUMMARY = (
    "TrainingJobName",
    "TrainingJobArn",
    "TrainingEndTime",
    "TrainingJobStatus",
    "SecondaryStatus",
)


class TrainingJobs:
    def __init__(
        self, ctx: ResourceContext, engine: TrainingEngine, experiments: Experiments
    ) -> None:
        self.ctx = ctx
        self.engine = engine
        self.experiments = experiments

    def job(self, name: str) -> Record:
        record = self.ctx.store.get(KIND, name_from(name, KIND))
        if record is None:
            arn = self.ctx.arn(KIND, name_from(name, KIND))
            raise ValidationException(
                f"Requested resource not found: Training job '{arn}' does not exist."
            )
        return record

    @operation("CreateTrainingJob")
    def create_training_job(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["TrainingJobName"]
        algorithm = request.get("AlgorithmSpecification")
        if not algorithm:
            raise ValidationException("AlgorithmSpecification is required.")
        self._check(request, algorithm)
        body = {
            key: value
            for key, value in request.items()
            if key not in {"Tags", "TrainingJobName"} and value is not None
        }
        body.update(
            TrainingJobName=name,
            TrainingJobStatus="InProgress",
            SecondaryStatus="Starting",
            SecondaryStatusTransitions=[],
            EnableNetworkIsolation=bool(request.get("EnableNetworkIsolation", False)),
            EnableManagedSpotTraining=bool(request.get("EnableManagedSpotTraining", False)),
            EnableInterContainerTrafficEncryption=bool(
                request.get("EnableInterContainerTrafficEncryption", False)
            ),
            ModelArtifacts={"S3ModelArtifacts": ""},
        )
        record = self.ctx.new_record(
            KIND, name, body, arn_member="TrainingJobArn", status="InProgress"
        )
        record.body["SecondaryStatusTransitions"] = [
            {
                "Status": "Starting",
                "StartTime": record.creation_time,
                "StatusMessage": "Launching requested ML instances",
            }
        ]
        experiment = request.get("ExperimentConfig")
        try:
            self.ctx.store.create(record, tag_pairs(request.get("Tags")))
        except AlreadyExists:
            raise ResourceInUse(
                "Training job names must be unique within an AWS account and region, and a "
                f"training job with this name already exists ({record.arn})"
            ) from None
        if experiment:
            self._track_in_experiment(record, experiment)
        self.engine.submit(name)
        return {"TrainingJobArn": record.arn}

    def validate(self, request: dict[str, Any]) -> None:
        """Check a CreateTrainingJob request as `create_training_job` does, creating nothing
        (tuning checks its trials' requests up front); a built-in algorithm's predefined
        metrics are added to the request's MetricDefinitions."""
        algorithm = request.get("AlgorithmSpecification")
        if not algorithm:
            raise ValidationException("AlgorithmSpecification is required.")
        self._check(request, algorithm)

    def _check(self, request: dict[str, Any], algorithm: dict[str, Any]) -> None:
        if algorithm.get("AlgorithmName"):
            raise NotImplementedOperation(
                "CreateTrainingJob",
                detail="AlgorithmSpecification.AlgorithmName (marketplace algorithms) is not "
                "implemented by Salvia yet; give a TrainingImage.",
            )
        image = algorithm.get("TrainingImage")
        if not image:
            raise ValidationException("AlgorithmSpecification.TrainingImage is required.")
        runtime = self.engine.ctx.runtimes.resolve(image)
        hyperparameters = request.get("HyperParameters") or {}
        if algorithm.get("ContainerEntrypoint"):
            raise NotImplementedOperation(
                "CreateTrainingJob",
                detail="AlgorithmSpecification.ContainerEntrypoint is not implemented by Salvia "
                "yet; use script mode (the sagemaker_program hyperparameter).",
            )
        if "sagemaker_program" not in hyperparameters:
            algorithm_spec = algorithms.for_runtime(runtime.name)
            if algorithm_spec is None:
                raise ValidationException(
                    f"Image '{image}' runs a training script: the hyperparameter "
                    "'sagemaker_program' must name it (the SageMaker SDK sets it for you)."
                )
            # a built-in algorithm: its predefined metrics are always collected, as on SageMaker
            given = {d["Name"] for d in algorithm.get("MetricDefinitions", [])}
            algorithm["MetricDefinitions"] = [
                *algorithm.get("MetricDefinitions", []),
                *(d for d in algorithm_spec.metric_definitions() if d["Name"] not in given),
            ]
        validate_channels(
            request.get("InputDataConfig") or [], algorithm.get("TrainingInputMode", "File")
        )
        resources = request.get("ResourceConfig")
        if not resources or "InstanceType" not in resources:
            raise ValidationException("ResourceConfig.InstanceType is required.")
        lookup_instance_type(resources["InstanceType"])
        if resources.get("InstanceCount", 1) < 1:
            raise ValidationException("ResourceConfig.InstanceCount must be at least 1.")
        for definition in algorithm.get("MetricDefinitions", []):
            try:
                re.compile(definition["Regex"])
            except re.error as error:
                raise ValidationException(
                    f"MetricDefinitions regex for '{definition['Name']}' is invalid: {error}"
                ) from None
        stopping = request.get("StoppingCondition") or {}
        if request.get("EnableManagedSpotTraining"):
            wait = stopping.get("MaxWaitTimeInSeconds")
            if wait is None:
                raise ValidationException(
                    "StoppingCondition.MaxWaitTimeInSeconds is required for managed spot training."
                )
            if wait < stopping.get("MaxRuntimeInSeconds", 86400):
                raise ValidationException(
                    "StoppingCondition.MaxWaitTimeInSeconds must be greater than or equal to "
                    "MaxRuntimeInSeconds."
                )
        elif "MaxWaitTimeInSeconds" in stopping:
            raise ValidationException(
                "StoppingCondition.MaxWaitTimeInSeconds is only valid with managed spot training."
            )
        checkpoint = request.get("CheckpointConfig") or {}
        local = checkpoint.get("LocalPath", "/opt/ml/checkpoints")
        if not local.startswith("/opt/ml/"):
            raise ValidationException(
                f"CheckpointConfig.LocalPath '{local}' must be under /opt/ml on Salvia."
            )
        self._check_s3(
            request["OutputDataConfig"].get("S3OutputPath"), "OutputDataConfig.S3OutputPath"
        )
        if checkpoint.get("S3Uri"):
            self._check_s3(checkpoint["S3Uri"], "CheckpointConfig.S3Uri")

    @staticmethod
    def _check_s3(uri: str | None, member: str) -> None:
        if not uri or not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", uri):
            raise ValidationException(f"{member} must be an s3://bucket/prefix URI; got '{uri}'.")

    def _track_in_experiment(self, record: Record, config: dict[str, Any]) -> None:
        """Create the job's trial component and file it under the trial, as SageMaker does."""
        component = f"{record.name}-aws-training-job"
        hyperparameters = record.body.get("HyperParameters") or {}
        body = {
            "TrialComponentName": component,
            "DisplayName": config.get("TrialComponentDisplayName", component),
            "Source": {"SourceArn": record.arn, "SourceType": "SageMakerTrainingJob"},
            "Status": {"PrimaryStatus": "InProgress"},
            "Parameters": {
                key: {"StringValue": value}
                for key, value in hyperparameters.items()
                if not key.startswith("sagemaker_")
            },
            "InputArtifacts": {},
            "OutputArtifacts": {},
        }
        tc = self.ctx.new_record(
            TRIAL_COMPONENT, component, body, arn_member="TrialComponentArn", parent=record.arn
        )
        self.ctx.store.create(tc)
        trial_name = config.get("TrialName")
        if trial_name:
            trial = self.ctx.store.get(TRIAL, trial_name)
            if trial is None and config.get("ExperimentName"):
                experiment = self.experiments.experiment(config["ExperimentName"])
                self.experiments.create_trial(
                    {"TrialName": trial_name, "ExperimentName": experiment.name}
                )
                trial = self.ctx.store.get(TRIAL, trial_name)
            if trial is not None:
                self.ctx.store.associate(tc.arn, trial.arn, IN_TRIAL, self.ctx.clock.now())

        def remember(job: Record) -> None:
            job.body["_MetricArns"] = [tc.arn]

        self.ctx.store.update(KIND, record.name, remember, record.last_modified_time)

    def on_finished(self, record: Record) -> None:
        """The engine's hook: bring the job's trial component to the job's final state."""
        arns = record.body.get("_MetricArns") or []
        if not arns:
            return
        component = self.ctx.store.get_by_arn(arns[0])
        if component is None:
            return
        status = record.body["TrainingJobStatus"]
        message = record.body.get("FailureReason", "")

        def change(tc: Record) -> None:
            tc.body["Status"] = {"PrimaryStatus": status, "Message": message[:1024]}
            tc.body["StartTime"] = record.body.get("TrainingStartTime")
            tc.body["EndTime"] = record.body.get("TrainingEndTime")
            artifacts = record.body.get("ModelArtifacts", {}).get("S3ModelArtifacts")
            if artifacts:
                tc.body["OutputArtifacts"] = {"SageMaker.ModelArtifact": {"Value": artifacts}}
            tc.status = status

        self.ctx.store.update(TRIAL_COMPONENT, component.name, change, self.ctx.clock.now())

    @staticmethod
    def _describe(record: Record) -> dict[str, Any]:
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }

    @operation("DescribeTrainingJob")
    def describe_training_job(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self.job(request["TrainingJobName"]))

    def document(self, record: Record) -> Document:
        """What `Search` sees of a training job: its description and its tags."""
        return Document(
            record, self._describe(record), {"Tags": lambda: tag_list(self.ctx, record.arn)}
        )

    @operation("ListTrainingJobs")
    def list_training_jobs(self, request: dict[str, Any]) -> dict[str, Any]:
        query = list_query(KIND, request)
        return list_page(self.ctx, query, "TrainingJobSummaries", _summary)

    @operation("StopTrainingJob")
    def stop_training_job(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.job(request["TrainingJobName"])
        status = record.body.get("TrainingJobStatus")
        if status == "Stopping":
            return {}
        if status != "InProgress":
            raise ValidationException(
                f"The training job {record.name} is not in InProgress state: it is {status}."
            )

        def change(job: Record) -> None:
            if job.body.get("TrainingJobStatus") == "InProgress":
                job.body["TrainingJobStatus"] = "Stopping"
                job.status = "Stopping"

        self.ctx.store.update(KIND, record.name, change, self.ctx.clock.now())
        self.engine.stop(record.name)
        return {}


def _summary(record: Record) -> dict[str, Any]:
    summary = {key: record.body.get(key) for key in _SUMMARY}
    summary.update(CreationTime=record.creation_time, LastModifiedTime=record.last_modified_time)
    return summary
