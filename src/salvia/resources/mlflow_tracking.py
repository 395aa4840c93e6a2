"""Managed MLflow tracking servers: CreateMlflowTrackingServer, Describe, List, Start, Stop,
Update, Delete and CreatePresignedMlflowTrackingServerUrl. The processes are the tracking
engine's (`salvia.tracking.servers`); this module checks requests and answers for them."""

from __future__ import annotations

from typing import Any

from salvia.errors import (
    AlreadyExists,
    NotImplementedOperation,
    ResourceNotFound,
    ValidationException,
)
from salvia.resources.common import ResourceContext, list_page, list_query, tag_pairs
from salvia.resources.registry import operation
from salvia.store.metadata import Record
from salvia.tracking.servers import KIND, TrackingServers, mlflow_version

_SUMMARY = ("TrackingServerArn", "TrackingServerName", "TrackingServerStatus", "IsActive",
            "MlflowVersion")  # fmt: skip
_STABLE = {"Created", "Started", "Stopped", "Updated", "CreateFailed", "StartFailed",
           "StopFailed", "UpdateFailed"}  # fmt: skip


class MlflowTracking:
    def __init__(self, ctx: ResourceContext, servers: TrackingServers) -> None:
        self.ctx = ctx
        self.servers = servers

    def _get(self, name: str) -> Record:
        record = self.ctx.store.get(KIND, name)
        if record is None:
            raise ResourceNotFound(f"Tracking server {name} does not exist.")
        return record

    @operation("CreateMlflowTrackingServer")
    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        version = mlflow_version()
        if version is None:
            raise NotImplementedOperation(
                "CreateMlflowTrackingServer",
                detail="MLflow is not installed: install the `salvia[mlflow]` extra.",
            )
        uri = request["ArtifactStoreUri"]
        if not uri.startswith("s3://") or len(uri) <= len("s3://"):
            raise ValidationException(f"ArtifactStoreUri must be an s3:// URI, got {uri!r}.")
        asked = request.get("MlflowVersion")
        if asked and not version.startswith(asked):
            raise ValidationException(
                f"MlflowVersion {asked} is not available: this platform runs MLflow {version}."
            )
        body = {k: v for k, v in request.items() if k != "Tags" and v is not None}
        body.update(
            TrackingServerStatus="Creating",
            IsActive="Inactive",
            MlflowVersion=version,
            TrackingServerSize=request.get("TrackingServerSize", "Small"),
            AutomaticModelRegistration=bool(request.get("AutomaticModelRegistration", False)),
        )
        record = self.ctx.new_record(
            KIND, request["TrackingServerName"], body, arn_member="TrackingServerArn",
            status="Creating",
        )  # fmt: skip
        try:
            self.ctx.store.create(record, tag_pairs(request.get("Tags")))
        except AlreadyExists:
            raise ValidationException(
                f"Tracking server {request['TrackingServerName']} already exists."
            ) from None
        self.servers.start(record.name)
        return {"TrackingServerArn": record.arn}

    @operation("DescribeMlflowTrackingServer")
    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(request["TrackingServerName"])
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }

    @operation("ListMlflowTrackingServers")
    def list(self, request: dict[str, Any]) -> dict[str, Any]:
        filters = {**request, "StatusEquals": request.get("TrackingServerStatus")}
        query = list_query(
            KIND, filters, created_after="CreatedAfter", created_before="CreatedBefore"
        )
        return list_page(self.ctx, query, "TrackingServerSummaries", _summary)

    def _transition(self, request: dict[str, Any], allowed: set[str], action: str) -> Record:
        record = self._get(request["TrackingServerName"])
        status = record.body.get("TrackingServerStatus")
        if status not in allowed:
            raise ValidationException(
                f"Tracking server {record.name} cannot be {action} while it is {status}."
            )
        return record

    @operation("StartMlflowTrackingServer")
    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._transition(request, {"Stopped", "StopFailed", "StartFailed"}, "started")
        self.servers.start(record.name, "Starting", "Started")
        return {"TrackingServerArn": record.arn}

    @operation("StopMlflowTrackingServer")
    def stop(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._transition(
            request, {"Created", "Started", "Updated", "StopFailed", "UpdateFailed"}, "stopped"
        )
        self.servers.stop(record.name)
        return {"TrackingServerArn": record.arn}

    @operation("UpdateMlflowTrackingServer")
    def update(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._transition(request, _STABLE, "updated")
        if request.get("ArtifactStoreUri") and request["ArtifactStoreUri"] != record.body.get(
            "ArtifactStoreUri"
        ):
            raise NotImplementedOperation(
                "UpdateMlflowTrackingServer",
                detail="Changing ArtifactStoreUri of a tracking server is not supported yet.",
            )
        members = (
            "TrackingServerSize",
            "AutomaticModelRegistration",
            "WeeklyMaintenanceWindowStart",
        )
        changes: dict[str, Any] = {k: request[k] for k in members if k in request}

        def change(found: Record) -> None:
            found.body.update(changes)

        self.ctx.store.update(KIND, record.name, change, self.ctx.clock.now())
        return {"TrackingServerArn": record.arn}

    @operation("DeleteMlflowTrackingServer")
    def delete(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._transition(request, _STABLE, "deleted")
        self.servers.stop(record.name, then_delete=True)
        return {"TrackingServerArn": record.arn}

    @operation("CreatePresignedMlflowTrackingServerUrl")
    def presigned_url(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._get(request["TrackingServerName"])
        url = record.body.get("TrackingServerUrl")
        if record.body.get("IsActive") != "Active" or not url:
            raise ValidationException(f"Tracking server {record.name} is not running.")
        # the server listens on loopback only: whoever can reach it is on this machine
        return {"AuthorizedUrl": url}


def _summary(record: Record) -> dict[str, Any]:
    summary = {key: record.body.get(key) for key in _SUMMARY}
    summary.update(CreationTime=record.creation_time, LastModifiedTime=record.last_modified_time)
    return summary
