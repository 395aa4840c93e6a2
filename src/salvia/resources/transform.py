"""Batch transform jobs: CreateTransformJob, DescribeTransformJob, ListTransformJobs,
StopTransformJob. The request is checked once here; the job runs in the transform engine."""

from __future__ import annotations

from typing import Any

from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.errors import ValidationException
from salvia.resources.common import ResourceContext, list_page, list_query
from salvia.resources.jobs import create_job, find_job, job_summary
from salvia.resources.registry import operation
from salvia.serving.batch import KIND, TransformEngine
from salvia.serving.batch_records import Processing
from salvia.serving.instances import MODEL
from salvia.store.metadata import Record

_SUMMARY = ("TransformJobName", "TransformJobArn", "TransformEndTime", "TransformJobStatus",
            "FailureReason")  # fmt: skip


class TransformJobs:
    def __init__(self, ctx: ResourceContext, engine: TransformEngine) -> None:
        self.ctx = ctx
        self.engine = engine

    def job(self, name: str) -> Record:
        return find_job(self.ctx, KIND, name)

    @operation("CreateTransformJob")
    def create_transform_job(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["TransformJobName"]
        self._check(request)
        record = create_job(self.ctx, KIND, request, "TransformJobName", "Transform")
        self.engine.submit(name)
        return {"TransformJobArn": record.arn}

    def _check(self, request: dict[str, Any]) -> None:
        model = request["ModelName"]
        if self.ctx.store.get(MODEL, model) is None:
            raise ValidationException(
                f'ModelName: could not find model "{self.ctx.arn(MODEL, model)}".'
            )
        source = request["TransformInput"]["DataSource"].get("S3DataSource")
        if not source:
            raise ValidationException("TransformInput.DataSource.S3DataSource is required.")
        if source.get("S3DataType", "S3Prefix") not in ("S3Prefix", "ManifestFile"):
            raise ValidationException(
                "TransformInput.DataSource.S3DataSource.S3DataType must be S3Prefix or "
                "ManifestFile (AugmentedManifestFile is not supported by Salvia yet)."
            )
        for member, uri in (
            ("TransformInput.DataSource.S3DataSource.S3Uri", source.get("S3Uri", "")),
            ("TransformOutput.S3OutputPath", request["TransformOutput"].get("S3OutputPath", "")),
        ):
            if not uri.startswith("s3://") or len(uri) <= len("s3://"):
                raise ValidationException(f"{member} must be an s3:// URI, got {uri!r}.")
        if request["TransformInput"].get("SplitType") == "TFRecord":
            raise ValidationException(
                "TransformInput.SplitType TFRecord is not supported by Salvia yet; use Line, "
                "RecordIO or None."
            )
        payload = request.get("MaxPayloadInMB")
        concurrency = request.get("MaxConcurrentTransforms")
        if payload and concurrency and payload * concurrency > 100:
            raise ValidationException(
                "MaxConcurrentTransforms * MaxPayloadInMB must not exceed 100 MB "
                f"({concurrency} * {payload})."
            )
        lookup_instance_type(request["TransformResources"].get("InstanceType") or "local")
        try:
            Processing.of(request.get("DataProcessing"))
        except ValueError as error:
            raise ValidationException(str(error)) from None

    @staticmethod
    def _describe(record: Record) -> dict[str, Any]:
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
        }

    @operation("DescribeTransformJob")
    def describe_transform_job(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self.job(request["TransformJobName"]))

    @operation("ListTransformJobs")
    def list_transform_jobs(self, request: dict[str, Any]) -> dict[str, Any]:
        return list_page(self.ctx, list_query(KIND, request), "TransformJobSummaries", _summary)

    @operation("StopTransformJob")
    def stop_transform_job(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.job(request["TransformJobName"])
        status = record.body.get("TransformJobStatus")
        if status in ("Stopping", "Stopped"):
            return {}
        if status != "InProgress":
            raise ValidationException(
                f"The transform job {record.name} is not in InProgress state: it is {status}."
            )

        def change(job: Record) -> None:
            if job.body.get("TransformJobStatus") == "InProgress":
                job.body["TransformJobStatus"] = "Stopping"
                job.status = "Stopping"

        self.ctx.store.update(KIND, record.name, change, self.ctx.clock.now())
        self.engine.stop(record.name)
        return {}


def _summary(record: Record) -> dict[str, Any]:
    return job_summary(record, _SUMMARY)
