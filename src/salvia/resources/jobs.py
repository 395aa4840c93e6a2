"""What the job families (transform, processing) share: recording a new job under a unique name,
finding one, and the summary their List* operations return."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from salvia.errors import AlreadyExists, ResourceInUse, ValidationException
from salvia.resources.common import ResourceContext, name_from, tag_pairs
from salvia.store.metadata import Record


def create_job(
    ctx: ResourceContext, kind: str, request: dict[str, Any], name_member: str, prefix: str
) -> Record:
    """Record the request as an InProgress job (`<prefix>JobStatus`, `<prefix>JobArn`);
    a taken name answers SageMaker's ResourceInUse."""
    body = {k: v for k, v in request.items() if k != "Tags" and v is not None}
    body[f"{prefix}JobStatus"] = "InProgress"
    record = ctx.new_record(
        kind, request[name_member], body, arn_member=f"{prefix}JobArn", status="InProgress"
    )
    try:
        return ctx.store.create(record, tag_pairs(request.get("Tags")))
    except AlreadyExists:
        raise ResourceInUse(
            "Job name must be unique within an AWS account and region, and a job with this "
            f"name already exists ({record.arn})"
        ) from None


def find_job(ctx: ResourceContext, kind: str, name: str) -> Record:
    record = ctx.store.get(kind, name_from(name, kind))
    if record is None:
        arn = ctx.arn(kind, name_from(name, kind))
        raise ValidationException(f"Could not find requested job with name {arn}")
    return record


def job_summary(record: Record, members: Sequence[str]) -> dict[str, Any]:
    summary = {key: record.body.get(key) for key in members}
    summary.update(CreationTime=record.creation_time, LastModifiedTime=record.last_modified_time)
    return summary
