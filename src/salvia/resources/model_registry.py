"""The model registry: model package groups and the model packages (versions) registered in them.

A versioned package is stored under the name `<group>/<version>` with its group's name key as
`parent` and its `ModelApprovalStatus` as `status`, so lists filter on both in the store. Versions
are numbered per group from a counter in the group's record, bumped under the store's row lock,
so concurrent registrations never share a number and a deleted version's number is not reused.

Every approval status a package takes (at registration and on each `UpdateModelPackage` that
changes it) is sent as an EventBridge "SageMaker Model Package State Change" event to the URLs of
`Settings.model_events_webhook`, so CI/CD can promote approved models.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from salvia.errors import AlreadyExists, ValidationException
from salvia.resources.common import (
    ResourceContext,
    create_record,
    list_page,
    list_query,
    tag_pairs,
)
from salvia.resources.filtered import filtered_page
from salvia.resources.registry import operation
from salvia.store.metadata import ListQuery, Record

GROUP = "model-package-group"
PACKAGE = "model-package"

log = logging.getLogger(__name__)


def _user(ctx: ResourceContext) -> dict[str, Any]:
    # Requests carry no verified identity yet (auth mode "open"): the account acts.
    account = ctx.settings.account_id
    return {"IamIdentity": {"Arn": f"arn:aws:iam::{account}:root", "PrincipalId": account}}


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_name(name_or_arn: str) -> str:
    """The store name of a package: `<group>/<version>` from a versioned ARN, else the name."""
    if name_or_arn.startswith("arn:"):
        head, _, tail = name_or_arn.partition(":model-package/")
        if not head or not tail:
            raise ValidationException(
                f"ModelPackageName '{name_or_arn}' is not the ARN of a model package."
            )
        return tail
    return name_or_arn


def find_package(ctx: ResourceContext, name_or_arn: str) -> Record:
    record = ctx.store.get(PACKAGE, package_name(name_or_arn))
    if record is None:
        arn = name_or_arn if name_or_arn.startswith("arn:") else ctx.arn(PACKAGE, name_or_arn)
        raise ValidationException(f"ModelPackage {arn} does not exist.")
    return record


def resolve_container(ctx: ResourceContext, container: dict[str, Any]) -> dict[str, Any]:
    """A `ContainerDefinition` naming a `ModelPackageName`, with the image, model data and
    environment of the package's first inference container filled in (the container's own
    Environment entries win)."""
    if not container.get("ModelPackageName"):
        return container
    package = find_package(ctx, container["ModelPackageName"])
    spec = package.body.get("InferenceSpecification") or {}
    containers = spec.get("Containers") or []
    if not containers:
        raise ValidationException(
            f"ModelPackage {package.arn} has no InferenceSpecification.Containers to deploy."
        )
    source = containers[0]
    resolved = {**container, "Image": source["Image"]}
    if source.get("ModelDataUrl"):
        resolved["ModelDataUrl"] = source["ModelDataUrl"]
    environment = {**(source.get("Environment") or {}), **(container.get("Environment") or {})}
    if environment:
        resolved["Environment"] = environment
    return resolved


class ModelRegistry:
    def __init__(
        self,
        ctx: ResourceContext,
        on_registered: Callable[[Record], None] | None = None,
    ) -> None:
        self.ctx = ctx
        # lineage tracking hooks in here; it must never fail a registration
        self.on_registered = on_registered

    # --- groups -----------------------------------------------------------------------------

    def group(self, name_or_arn: str) -> Record:
        name = name_or_arn
        if name_or_arn.startswith("arn:"):
            head, _, name = name_or_arn.partition(":model-package-group/")
            if not head or not name:
                raise ValidationException(
                    f"ModelPackageGroupName '{name_or_arn}' is not a model package group ARN."
                )
        record = self.ctx.store.get(GROUP, name)
        if record is None:
            raise ValidationException(
                f"ModelPackageGroup {self.ctx.arn(GROUP, name)} does not exist."
            )
        return record

    @operation("CreateModelPackageGroup")
    def create_model_package_group(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["ModelPackageGroupName"]
        body = {
            "ModelPackageGroupName": name,
            "ModelPackageGroupDescription": request.get("ModelPackageGroupDescription"),
            "ModelPackageGroupStatus": "Completed",
            "CreatedBy": _user(self.ctx),
            "_NextVersion": 1,
        }
        record = self.ctx.new_record(
            GROUP, name, body, arn_member="ModelPackageGroupArn", status="Completed"
        )
        create_record(
            self.ctx,
            record,
            request.get("Tags"),
            f"Model Package Group already exists: {record.arn}",
        )
        return {"ModelPackageGroupArn": record.arn}

    @operation("DescribeModelPackageGroup")
    def describe_model_package_group(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.group(request["ModelPackageGroupName"])
        return {**_public(record.body), "CreationTime": record.creation_time}

    @operation("ListModelPackageGroups")
    def list_model_package_groups(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("CrossAccountFilterOption") == "CrossAccount":
            return {"ModelPackageGroupSummaryList": []}  # one account: nothing is shared in
        return list_page(
            self.ctx,
            list_query(GROUP, request),
            "ModelPackageGroupSummaryList",
            lambda r: {
                "ModelPackageGroupName": r.name,
                "ModelPackageGroupArn": r.arn,
                "ModelPackageGroupDescription": r.body.get("ModelPackageGroupDescription"),
                "CreationTime": r.creation_time,
                "ModelPackageGroupStatus": "Completed",
            },
        )

    @operation("DeleteModelPackageGroup")
    def delete_model_package_group(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.group(request["ModelPackageGroupName"])
        versions = self.ctx.store.list_records(
            ListQuery(kind=PACKAGE, parent=record.name_key, limit=1)
        )
        if versions.records:
            raise ValidationException(
                f"Model Package Group {record.arn} still has model packages; "
                "delete its model packages first."
            )
        self.ctx.store.delete(GROUP, record.name)
        return {}

    # --- packages ---------------------------------------------------------------------------

    @operation("CreateModelPackage")
    def create_model_package(self, request: dict[str, Any]) -> dict[str, Any]:
        unversioned = request.get("ModelPackageName")
        group_name = request.get("ModelPackageGroupName")
        if bool(unversioned) == bool(group_name):
            raise ValidationException(
                "Give exactly one of ModelPackageName (an unversioned package) and "
                "ModelPackageGroupName (a new version in that group)."
            )
        if request.get("SourceAlgorithmSpecification"):
            raise ValidationException(
                "SourceAlgorithmSpecification (marketplace algorithms) is not supported by "
                "Salvia; give an InferenceSpecification."
            )
        spec = request.get("InferenceSpecification")
        if not spec:
            raise ValidationException("InferenceSpecification is required.")
        _check_inference_specification(spec, "InferenceSpecification")
        approval = request.get("ModelApprovalStatus")
        if unversioned and approval:
            raise ValidationException(
                "ModelApprovalStatus applies only to versioned model packages "
                "(those created with ModelPackageGroupName)."
            )
        body = {
            key: value
            for key, value in request.items()
            if key not in {"Tags", "ClientToken", "ModelPackageName", "ModelPackageGroupName"}
            and value is not None
        }
        body.update(
            ModelPackageStatus="Completed",
            ModelPackageStatusDetails={"ValidationStatuses": [], "ImageScanStatuses": []},
            CertifyForMarketplace=bool(request.get("CertifyForMarketplace", False)),
            CreatedBy=_user(self.ctx),
        )
        if unversioned:
            record = self.ctx.new_record(
                PACKAGE,
                unversioned,
                {**body, "ModelPackageName": unversioned},
                arn_member="ModelPackageArn",
            )
            create_record(
                self.ctx,
                record,
                request.get("Tags"),
                f"ModelPackage already exists: {record.arn}",
            )
        else:
            record = self._create_version(str(group_name), approval, body, request.get("Tags"))
        self._announce(record)
        if self.on_registered is not None:
            try:
                self.on_registered(record)
            except Exception:  # lineage is a by-product; it never fails a registration
                log.exception("lineage of model package %s failed", record.arn)
        return {"ModelPackageArn": record.arn}

    def _create_version(
        self, group_name: str, approval: str | None, body: dict[str, Any], tags: Any
    ) -> Record:
        group = self.group(group_name)
        taken: list[int] = []

        def bump(record: Record) -> None:
            version = int(record.body.get("_NextVersion", 1))
            taken.append(version)
            record.body["_NextVersion"] = version + 1

        tags_pairs = tag_pairs(tags)
        while True:
            taken.clear()
            if self.ctx.store.update(GROUP, group.name, bump, group.last_modified_time) is None:
                self.group(group_name)  # deleted meanwhile: answer as a missing group
            version = taken[-1]
            status = approval or "PendingManualApproval"
            record = self.ctx.new_record(
                PACKAGE,
                f"{group.name}/{version}",
                {
                    **body,
                    "ModelPackageName": group.name,
                    "ModelPackageGroupName": group.name,
                    "ModelPackageVersion": version,
                    "ModelApprovalStatus": status,
                },
                arn_member="ModelPackageArn",
                parent=group.name_key,
                status=status,
            )
            try:
                return self.ctx.store.create(record, tags_pairs)
            except AlreadyExists:  # a version left by a restored database: take the next
                continue

    @operation("DescribeModelPackage")
    def describe_model_package(self, request: dict[str, Any]) -> dict[str, Any]:
        return _describe(find_package(self.ctx, request["ModelPackageName"]))

    @operation("ListModelPackages")
    def list_model_packages(self, request: dict[str, Any]) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        kind_of = request.get("ModelPackageType")
        if request.get("ModelPackageGroupName"):
            fixed["parent"] = self.group(request["ModelPackageGroupName"]).name_key
            kind_of = kind_of or "Versioned"
        kind_of = kind_of or "Unversioned"  # SageMaker's default without a group
        given = dict(request)
        if request.get("ModelApprovalStatus"):
            given["StatusEquals"] = request["ModelApprovalStatus"]
        query = list_query(PACKAGE, given, **fixed)

        def wanted(record: Record) -> bool:
            versioned = "ModelPackageVersion" in record.body
            return kind_of == "Both" or versioned == (kind_of == "Versioned")

        return filtered_page(self.ctx, query, wanted, "ModelPackageSummaryList", _summary)

    @operation("UpdateModelPackage")
    def update_model_package(self, request: dict[str, Any]) -> dict[str, Any]:
        record = find_package(self.ctx, request["ModelPackageArn"])
        approval = request.get("ModelApprovalStatus")
        versioned = "ModelPackageVersion" in record.body
        if approval and not versioned:
            raise ValidationException(
                "ModelApprovalStatus can be updated only on versioned model packages."
            )
        if request.get("ApprovalDescription") and not approval:
            raise ValidationException("ApprovalDescription needs a ModelApprovalStatus.")
        spec = request.get("InferenceSpecification")
        if spec:
            _check_inference_specification(spec, "InferenceSpecification")
        for i, extra in enumerate(request.get("AdditionalInferenceSpecificationsToAdd") or []):
            _check_inference_specification(extra, f"AdditionalInferenceSpecificationsToAdd.{i}")
        user = _user(self.ctx)
        previous: list[str | None] = []

        def change(package: Record) -> None:
            body = package.body
            previous.append(body.get("ModelApprovalStatus"))
            if approval:
                body["ModelApprovalStatus"] = approval
                package.status = approval
                if request.get("ApprovalDescription") is not None:
                    body["ApprovalDescription"] = request["ApprovalDescription"]
            properties = dict(body.get("CustomerMetadataProperties") or {})
            properties.update(request.get("CustomerMetadataProperties") or {})
            for key in request.get("CustomerMetadataPropertiesToRemove") or []:
                properties.pop(key, None)
            if properties or "CustomerMetadataProperties" in body:
                body["CustomerMetadataProperties"] = properties
            additional = request.get("AdditionalInferenceSpecificationsToAdd")
            if additional:
                body["AdditionalInferenceSpecifications"] = [
                    *(body.get("AdditionalInferenceSpecifications") or []),
                    *additional,
                ]
            for member in (
                "InferenceSpecification",
                "SourceUri",
                "ModelCard",
                "ModelLifeCycle",
                "ModelPackageRegistrationType",
            ):
                if request.get(member) is not None:
                    body[member] = request[member]
            body["LastModifiedBy"] = user

        updated = self.ctx.store.update(PACKAGE, record.name, change, self.ctx.clock.now())
        if updated is None:
            raise ValidationException(f"ModelPackage {record.arn} does not exist.")
        if approval and previous and previous[-1] != approval:
            self._announce(updated)
        return {"ModelPackageArn": updated.arn}

    @operation("DeleteModelPackage")
    def delete_model_package(self, request: dict[str, Any]) -> dict[str, Any]:
        record = find_package(self.ctx, request["ModelPackageName"])
        self.ctx.store.delete(PACKAGE, record.name)
        return {}

    # --- events -----------------------------------------------------------------------------

    def _announce(self, record: Record) -> None:
        """Send the package's state as EventBridge would, off the request path."""
        urls = self.ctx.settings.model_event_webhooks()
        if not urls or "ModelPackageVersion" not in record.body:
            return
        detail = json.loads(json.dumps(_describe(record), default=str))
        detail["CreationTime"] = _iso(record.creation_time)
        detail["LastModifiedTime"] = _iso(record.last_modified_time)
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "SageMaker Model Package State Change",
            "source": "aws.sagemaker",
            "account": self.ctx.settings.account_id,
            "time": _iso(self.ctx.clock.now()),
            "region": self.ctx.settings.region,
            "resources": [record.arn],
            "detail": detail,
        }
        for url in urls:
            threading.Thread(
                target=_post, args=(url, event), name="model-event", daemon=True
            ).start()


def _post(url: str, event: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(event).encode(), headers={"Content-Type": "application/json"}
    )
    for attempt in range(3):
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except OSError as error:  # delivery is best effort, as EventBridge targets' are
            if attempt == 2:
                log.warning("model package event to %s failed: %s", url, error)
            else:
                threading.Event().wait(0.5 * (attempt + 1))


def _check_inference_specification(spec: dict[str, Any], path: str) -> None:
    containers = spec.get("Containers") or []
    if not containers:
        raise ValidationException(f"{path}.Containers must name at least one container.")
    for i, container in enumerate(containers):
        if not container.get("Image"):
            raise ValidationException(f"{path}.Containers.{i}.Image is required.")
        url = container.get("ModelDataUrl")
        if url and not str(url).startswith(("s3://", "https://")):
            raise ValidationException(
                f"{path}.Containers.{i}.ModelDataUrl must be an s3:// URI; got '{url}'."
            )


def _public(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if not k.startswith("_")}


def _describe(record: Record) -> dict[str, Any]:
    described = {
        **_public(record.body),
        "CreationTime": record.creation_time,
        "LastModifiedTime": record.last_modified_time,
    }
    return described


def _summary(record: Record) -> dict[str, Any]:
    body = record.body
    summary = {
        "ModelPackageName": body.get("ModelPackageName", record.name),
        "ModelPackageArn": record.arn,
        "ModelPackageDescription": body.get("ModelPackageDescription"),
        "CreationTime": record.creation_time,
        "ModelPackageStatus": body.get("ModelPackageStatus", "Completed"),
    }
    if "ModelPackageVersion" in body:
        summary.update(
            ModelPackageGroupName=body["ModelPackageGroupName"],
            ModelPackageVersion=body["ModelPackageVersion"],
            ModelApprovalStatus=body["ModelApprovalStatus"],
        )
    return summary
