"""Processing jobs: CreateProcessingJob, DescribeProcessingJob, ListProcessingJobs,
StopProcessingJob. The request is checked once here; the job runs in the processing engine."""

from __future__ import annotations

from typing import Any

from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.errors import ValidationException
from salvia.processing.engine import KIND, ProcessingEngine
from salvia.resources.common import ResourceContext, list_page, list_query
from salvia.resources.jobs import create_job, find_job, job_summary
from salvia.resources.registry import operation
from salvia.store.metadata import Record

PROCESSING_ROOT = "/opt/ml/processing/"
_SUMMARY = ("ProcessingJobName", "ProcessingJobArn", "ProcessingEndTime", "ProcessingJobStatus",
            "FailureReason", "ExitMessage")  # fmt: skip


class ProcessingJobs:
    def __init__(self, ctx: ResourceContext, engine: ProcessingEngine) -> None:
        self.ctx = ctx
        self.engine = engine

    def job(self, name: str) -> Record:
        return find_job(self.ctx, KIND, name)

    @operation("CreateProcessingJob")
    def create_processing_job(self, request: dict[str, Any]) -> dict[str, Any]:
        self._check(request)
        name = request["ProcessingJobName"]
        record = create_job(self.ctx, KIND, request, "ProcessingJobName", "Processing")
        self.engine.submit(name)
        return {"ProcessingJobArn": record.arn}

    def _check(self, request: dict[str, Any]) -> None:
        app = request["AppSpecification"]
        self.engine.ctx.runtimes.resolve(app["ImageUri"])  # an unknown image fails now
        if not app.get("ContainerEntrypoint"):
            raise ValidationException(
                "AppSpecification.ContainerEntrypoint is required by Salvia: an image's own "
                "entrypoint is not known here."
            )
        cluster = request["ProcessingResources"]["ClusterConfig"]
        lookup_instance_type(cluster["InstanceType"])
        names: set[str] = set()
        paths: list[tuple[str, str]] = []
        for index, item in enumerate(request.get("ProcessingInputs") or []):
            member = f"ProcessingInputs.{index + 1}"
            names.add(_unique_name(item["InputName"], names, member + ".InputName"))
            if item.get("DatasetDefinition"):
                raise ValidationException(
                    f"{member}.DatasetDefinition (Athena/Redshift) is not supported by Salvia yet."
                )
            s3 = item.get("S3Input")
            if not s3:
                raise ValidationException(f"{member}.S3Input is required.")
            if s3.get("S3InputMode", "File") != "File":
                raise ValidationException(f"{member}.S3Input.S3InputMode: only File is supported.")
            _s3_uri(s3["S3Uri"], f"{member}.S3Input.S3Uri")
            paths.append((_local(s3["LocalPath"], f"{member}.S3Input.LocalPath"), member))
        outputs = (request.get("ProcessingOutputConfig") or {}).get("Outputs") or []
        for index, item in enumerate(outputs):
            member = f"ProcessingOutputConfig.Outputs.{index + 1}"
            names.add(_unique_name(item["OutputName"], names, member + ".OutputName"))
            s3 = item.get("S3Output")
            if not s3:
                raise ValidationException(
                    f"{member}.S3Output is required (FeatureStoreOutput is not supported yet)."
                )
            _s3_uri(s3["S3Uri"], f"{member}.S3Output.S3Uri")
            paths.append((_local(s3["LocalPath"], f"{member}.S3Output.LocalPath"), member))
        for index, (path, member) in enumerate(paths):
            for other, other_member in paths[index + 1 :]:
                if (
                    path.startswith(other.rstrip("/") + "/")
                    or other.startswith(path.rstrip("/") + "/")
                    or path == other
                ):
                    raise ValidationException(
                        f"{member} and {other_member} have overlapping LocalPaths "
                        f"({path}, {other})."
                    )

    @operation("DescribeProcessingJob")
    def describe_processing_job(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.job(request["ProcessingJobName"])
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }

    @operation("ListProcessingJobs")
    def list_processing_jobs(self, request: dict[str, Any]) -> dict[str, Any]:
        query = list_query(KIND, request)
        return list_page(self.ctx, query, "ProcessingJobSummaries", _summary)

    @operation("StopProcessingJob")
    def stop_processing_job(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.job(request["ProcessingJobName"])
        status = record.body.get("ProcessingJobStatus")
        if status in ("Stopping", "Stopped"):
            return {}
        if status != "InProgress":
            raise ValidationException(
                f"The processing job {record.name} is not in InProgress state: it is {status}."
            )
        self.engine.stop(record.name)
        return {}


def _summary(record: Record) -> dict[str, Any]:
    return job_summary(record, _SUMMARY)


def _unique_name(name: str, seen: set[str], member: str) -> str:
    if name in seen:
        raise ValidationException(f"{member} {name!r} is used twice: names must be unique.")
    return name


def _s3_uri(uri: str, member: str) -> None:
    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise ValidationException(f"{member} must be an s3:// URI, got {uri!r}.")


def _local(path: str, member: str) -> str:
    if not path.startswith(PROCESSING_ROOT) or ".." in path.split("/"):
        raise ValidationException(f"{member} must be a path under {PROCESSING_ROOT}, got {path!r}.")
    return path
