"""Lineage: artifacts, actions and contexts, the associations between them, and QueryLineage.

Lineage entities are artifacts, actions, contexts and trial components. An association is kept
twice, each copy for what it serves: as an edge in the store's association table (kind
`Lineage:<AssociationType>`), which the store removes with either end and which QueryLineage walks;
and as a small `lineage-association` record carrying its type, time and creator, which
ListAssociations pages through. A record whose edge is gone is skipped and removed when seen.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from salvia.errors import AlreadyExists, ResourceNotFound, ValidationException
from salvia.resources.common import ResourceContext, create_record, epoch, list_query
from salvia.resources.experiments import TRIAL_COMPONENT
from salvia.resources.filtered import filtered_page
from salvia.resources.registry import operation
from salvia.store.metadata import ListQuery, Record

ARTIFACT = "artifact"
ACTION = "action"
CONTEXT = "context"
ASSOCIATION = "lineage-association"
EDGE_TYPES = ("ContributedTo", "AssociatedWith", "DerivedFrom", "Produced", "SameAs")
LINEAGE_TYPES = {
    ARTIFACT: "Artifact",
    ACTION: "Action",
    CONTEXT: "Context",
    TRIAL_COMPONENT: "TrialComponent",
}
_TYPE_MEMBER = {ARTIFACT: "ArtifactType", ACTION: "ActionType", CONTEXT: "ContextType"}
_NAME_MEMBER = {
    ARTIFACT: "ArtifactName",
    ACTION: "ActionName",
    CONTEXT: "ContextName",
    TRIAL_COMPONENT: "TrialComponentName",
}


def edge_kind(association_type: str) -> str:
    return f"Lineage:{association_type}"


def entity_type(record: Record) -> str:
    """What QueryLineage and ListAssociations call an entity's type (`DataSet`, `Endpoint`...)."""
    member = _TYPE_MEMBER.get(record.kind)
    if member:
        return str(record.body.get(member) or "")
    source_type = str((record.body.get("Source") or {}).get("SourceType") or "")
    return source_type.removeprefix("SageMaker") or "TrialComponent"


def user(ctx: ResourceContext) -> dict[str, Any]:
    account = ctx.settings.account_id
    return {"UserProfileName": account, "UserProfileArn": f"arn:aws:iam::{account}:root"}


class Lineage:
    def __init__(self, ctx: ResourceContext) -> None:
        self.ctx = ctx

    # --- entities ---------------------------------------------------------------------------

    def entity(self, arn: str, member: str) -> Record:
        record = self.ctx.store.get_by_arn(arn)
        if record is None or record.kind not in LINEAGE_TYPES:
            if record is not None or not arn.startswith("arn:"):
                raise ValidationException(
                    f"{member} '{arn}' is not the ARN of an artifact, action, context or "
                    "trial component."
                )
            raise ResourceNotFound(f"{member} '{arn}' does not exist.")
        return record

    def _named(self, kind: str, name: str) -> Record:
        record = self.ctx.store.get(kind, name)
        if record is None:
            raise ResourceNotFound(
                f"{LINEAGE_TYPES[kind]} '{self.ctx.arn(kind, name)}' does not exist."
            )
        return record

    def _describe(self, record: Record) -> dict[str, Any]:
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
            "LastModifiedBy": record.body.get("CreatedBy"),
        }

    def _create(self, kind: str, name: str, body: dict[str, Any], tags: Any) -> Record:
        member = {ARTIFACT: "ArtifactArn", ACTION: "ActionArn", CONTEXT: "ContextArn"}[kind]
        source = body.get("Source") or {}
        if not source.get("SourceUri"):
            raise ValidationException("Source.SourceUri is required.")
        body = {k: v for k, v in body.items() if v is not None}
        body["CreatedBy"] = user(self.ctx)
        record = self.ctx.new_record(kind, name, body, arn_member=member)
        label = LINEAGE_TYPES[kind]
        return create_record(self.ctx, record, tags, f"{label} '{record.arn}' already exists.")

    def _delete(self, record: Record) -> None:
        for association in self._association_records(record.arn):
            self.ctx.store.delete(ASSOCIATION, association.name)
        self.ctx.store.delete(record.kind, record.name)

    def _list(
        self, kind: str, request: dict[str, Any], result_key: str, summary: tuple[str, ...]
    ) -> dict[str, Any]:
        query = list_query(
            kind, request, created_after="CreatedAfter", created_before="CreatedBefore"
        )
        uri, wanted_type = request.get("SourceUri"), request.get(_TYPE_MEMBER[kind])

        def wanted(record: Record) -> bool:
            if uri and (record.body.get("Source") or {}).get("SourceUri") != uri:
                return False
            return not wanted_type or record.body.get(_TYPE_MEMBER[kind]) == wanted_type

        def summarize(record: Record) -> dict[str, Any]:
            if not summary:  # a lookup, not a listing
                return {"_Arn": record.arn}
            return {
                **{member: record.body.get(member) for member in summary},
                "CreationTime": record.creation_time,
                "LastModifiedTime": record.last_modified_time,
            }

        return filtered_page(self.ctx, query, wanted, result_key, summarize)

    def by_source(self, kind: str, uri: str, entity_type: str | None = None) -> Record | None:
        """The newest entity of `kind` whose Source.SourceUri is `uri` (and of that type)."""
        request: dict[str, Any] = {"SourceUri": uri, "MaxResults": 1}
        if entity_type:
            request[_TYPE_MEMBER[kind]] = entity_type
        found = self._list(kind, request, "Found", ())["Found"]
        return self.ctx.store.get_by_arn(found[0]["_Arn"]) if found else None

    @operation("CreateArtifact")
    def create_artifact(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in request.items() if k != "Tags"}
        record = self._create(ARTIFACT, uuid.uuid4().hex, body, request.get("Tags"))
        return {"ArtifactArn": record.arn}

    @operation("DescribeArtifact")
    def describe_artifact(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.ctx.store.get_by_arn(request["ArtifactArn"])
        if record is None or record.kind != ARTIFACT:
            raise ResourceNotFound(f"Artifact '{request['ArtifactArn']}' does not exist.")
        return self._describe(record)

    @operation("ListArtifacts")
    def list_artifacts(self, request: dict[str, Any]) -> dict[str, Any]:
        summary = ("ArtifactArn", "ArtifactName", "Source", "ArtifactType")
        return self._list(ARTIFACT, request, "ArtifactSummaries", summary)

    @operation("DeleteArtifact")
    def delete_artifact(self, request: dict[str, Any]) -> dict[str, Any]:
        arn = request.get("ArtifactArn")
        source: dict[str, Any] = request.get("Source") or {}
        if bool(arn) == bool(source):
            raise ValidationException("Give exactly one of ArtifactArn and Source.")
        if arn:
            record = self.ctx.store.get_by_arn(arn)
            if record is None or record.kind != ARTIFACT:
                raise ResourceNotFound(f"Artifact '{arn}' does not exist.")
        else:
            found = self.by_source(ARTIFACT, source["SourceUri"])
            if found is None:
                raise ResourceNotFound(
                    f"No artifact has the Source.SourceUri '{source['SourceUri']}'."
                )
            record = found
        self._delete(record)
        return {"ArtifactArn": record.arn}

    @operation("CreateAction")
    def create_action(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in request.items() if k != "Tags"}
        body.setdefault("Status", "Unknown")
        record = self._create(ACTION, request["ActionName"], body, request.get("Tags"))
        return {"ActionArn": record.arn}

    @operation("DescribeAction")
    def describe_action(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self._named(ACTION, _name(request["ActionName"], ACTION)))

    @operation("ListActions")
    def list_actions(self, request: dict[str, Any]) -> dict[str, Any]:
        summary = ("ActionArn", "ActionName", "Source", "ActionType", "Status")
        return self._list(ACTION, request, "ActionSummaries", summary)

    @operation("DeleteAction")
    def delete_action(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._named(ACTION, _name(request["ActionName"], ACTION))
        self._delete(record)
        return {"ActionArn": record.arn}

    @operation("CreateContext")
    def create_context(self, request: dict[str, Any]) -> dict[str, Any]:
        body = {k: v for k, v in request.items() if k != "Tags"}
        record = self._create(CONTEXT, request["ContextName"], body, request.get("Tags"))
        return {"ContextArn": record.arn}

    @operation("DescribeContext")
    def describe_context(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self._named(CONTEXT, _name(request["ContextName"], CONTEXT)))

    @operation("ListContexts")
    def list_contexts(self, request: dict[str, Any]) -> dict[str, Any]:
        summary = ("ContextArn", "ContextName", "Source", "ContextType")
        return self._list(CONTEXT, request, "ContextSummaries", summary)

    @operation("DeleteContext")
    def delete_context(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._named(CONTEXT, _name(request["ContextName"], CONTEXT))
        self._delete(record)
        return {"ContextArn": record.arn}

    # --- associations -----------------------------------------------------------------------

    def associate(self, source: Record, destination: Record, association_type: str) -> None:
        """Add an edge (idempotent), as AddAssociation and automatic tracking do."""
        if source.arn == destination.arn:
            raise ValidationException("An entity cannot be associated with itself.")
        now = self.ctx.clock.now()
        self.ctx.store.associate(source.arn, destination.arn, edge_kind(association_type), now)
        name = _association_name(source.arn, destination.arn)
        body = {
            "SourceArn": source.arn,
            "DestinationArn": destination.arn,
            "AssociationType": association_type,
            "CreatedBy": user(self.ctx),
        }
        record = self.ctx.new_record(ASSOCIATION, name, body, arn_member="_Arn")
        record.body["_Types"] = [entity_type(source), entity_type(destination)]
        record.body["_Names"] = [
            source.body.get(_NAME_MEMBER[source.kind]),
            destination.body.get(_NAME_MEMBER[destination.kind]),
        ]
        if self.ctx.store.get(ASSOCIATION, name) is None:
            # created concurrently: the edge is there either way
            with contextlib.suppress(AlreadyExists):
                self.ctx.store.create(record)

    @operation("AddAssociation")
    def add_association(self, request: dict[str, Any]) -> dict[str, Any]:
        source = self.entity(request["SourceArn"], "SourceArn")
        destination = self.entity(request["DestinationArn"], "DestinationArn")
        self.associate(source, destination, request.get("AssociationType") or "AssociatedWith")
        return {"SourceArn": source.arn, "DestinationArn": destination.arn}

    @operation("DeleteAssociation")
    def delete_association(self, request: dict[str, Any]) -> dict[str, Any]:
        source, destination = request["SourceArn"], request["DestinationArn"]
        removed = [
            self.ctx.store.disassociate(source, destination, edge_kind(t)) for t in EDGE_TYPES
        ]
        self.ctx.store.delete(ASSOCIATION, _association_name(source, destination))
        if not any(removed):
            raise ResourceNotFound(f"There is no association from '{source}' to '{destination}'.")
        return {"SourceArn": source, "DestinationArn": destination}

    def edges(
        self, *, sources: Iterable[str] = (), destinations: Iterable[str] = ()
    ) -> list[tuple[str, str, str]]:
        """(source, destination, AssociationType) of every lineage edge at these ends."""
        sources, destinations = list(sources), list(destinations)
        found = []
        for association_type in EDGE_TYPES:
            kind = edge_kind(association_type)
            for source, destination in self.ctx.store.associated(
                kind, sources=sources, destinations=destinations
            ):
                found.append((source, destination, association_type))
        return found

    def _association_records(self, arn: str) -> list[Record]:
        names = {
            _association_name(s, d) for s, d, _ in self.edges(sources=[arn], destinations=[arn])
        }
        records = [self.ctx.store.get(ASSOCIATION, name) for name in names]
        return [record for record in records if record is not None]

    @operation("ListAssociations")
    def list_associations(self, request: dict[str, Any]) -> dict[str, Any]:
        sort_by = request.get("SortBy", "CreationTime")
        if sort_by != "CreationTime":  # the others are not columns of the store
            raise ValidationException(
                f"SortBy '{sort_by}' is not supported by Salvia for ListAssociations; "
                "use CreationTime."
            )
        fixed: dict[str, Any] = {}
        ends = {m: request[m] for m in ("SourceArn", "DestinationArn") if request.get(m)}
        if ends:
            edges = self.edges(
                sources=[ends["SourceArn"]] if "SourceArn" in ends else [],
                destinations=[ends["DestinationArn"]] if "DestinationArn" in ends else [],
            )
            fixed["arns"] = [
                self.ctx.arn(ASSOCIATION, _association_name(s, d)) for s, d, _ in edges
            ]
        query = list_query(
            ASSOCIATION,
            {k: v for k, v in request.items() if k != "SortBy"},
            created_after="CreatedAfter",
            created_before="CreatedBefore",
            **fixed,
        )
        wanted_types = (request.get("SourceType"), request.get("DestinationType"))

        def wanted(record: Record) -> bool:
            body = record.body
            for member in ("SourceArn", "DestinationArn", "AssociationType"):
                if request.get(member) and body[member] != request[member]:
                    return False
            for wanted_type, actual in zip(wanted_types, body.get("_Types", ()), strict=False):
                if wanted_type and wanted_type != actual:
                    return False
            if not self.ctx.store.associated(
                edge_kind(body["AssociationType"]), sources=[body["SourceArn"]]
            ).count((body["SourceArn"], body["DestinationArn"])):
                self.ctx.store.delete(ASSOCIATION, record.name)  # an end was deleted
                return False
            return True

        def summarize(record: Record) -> dict[str, Any]:
            body = record.body
            names = body.get("_Names") or [None, None]
            types = body.get("_Types") or [None, None]
            return {
                "SourceArn": body["SourceArn"],
                "DestinationArn": body["DestinationArn"],
                "SourceType": types[0],
                "DestinationType": types[1],
                "AssociationType": body["AssociationType"],
                "SourceName": names[0],
                "DestinationName": names[1],
                "CreationTime": record.creation_time,
                "CreatedBy": body.get("CreatedBy"),
            }

        return filtered_page(self.ctx, query, wanted, "AssociationSummaries", summarize)

    # --- QueryLineage -----------------------------------------------------------------------

    @operation("QueryLineage")
    def query_lineage(self, request: dict[str, Any]) -> dict[str, Any]:
        starts = [self.start_entity(arn) for arn in request.get("StartArns") or []]
        if not starts:
            raise ValidationException("StartArns must name the entity to start from.")
        direction = request.get("Direction", "Ascendants")
        depth = request.get("MaxDepth", 10)
        limit = request.get("MaxResults", 100)
        visited: dict[str, None] = {record.arn: None for record in starts}
        edges: dict[tuple[str, str], str] = {}
        for upward in (True, False):
            if direction != "Both" and upward != (direction == "Ascendants"):
                continue
            frontier = [record.arn for record in starts]
            seen = set(frontier)
            for _ in range(depth):
                if not frontier:
                    break
                found = (
                    self.edges(destinations=frontier) if upward else self.edges(sources=frontier)
                )
                following = []
                for source, destination, association_type in found:
                    edges[(source, destination)] = association_type
                    reached = source if upward else destination
                    if reached not in seen:
                        seen.add(reached)
                        following.append(reached)
                        visited[reached] = None
                frontier = following
        vertices = [
            record
            for record in (self.ctx.store.get_by_arn(arn) for arn in visited)
            if record is not None and _passes(record, request.get("Filters") or {})
        ]
        offset = _decode_offset(request)
        page = vertices[offset : offset + limit]
        response: dict[str, Any] = {
            "Vertices": [
                {
                    "Arn": record.arn,
                    "Type": entity_type(record),
                    "LineageType": LINEAGE_TYPES[record.kind],
                }
                for record in page
            ]
        }
        if request.get("IncludeEdges", True):
            shown = {record.arn for record in page}
            response["Edges"] = [
                {"SourceArn": s, "DestinationArn": d, "AssociationType": t}
                for (s, d), t in edges.items()
                if s in shown or d in shown
            ]
        if offset + limit < len(vertices):
            response["NextToken"] = _encode_offset(request, offset + limit)
        return response

    def start_entity(self, arn: str) -> Record:
        """A lineage entity, or the entity that stands for a SageMaker resource's ARN (an
        endpoint's context, a training job's trial component, a model package's artifact)."""
        record = self.ctx.store.get_by_arn(arn)
        if record is not None and record.kind in LINEAGE_TYPES:
            return record
        if record is not None:
            for kind in (CONTEXT, ACTION, ARTIFACT):
                entity = self.by_source(kind, arn)
                if entity is not None:
                    return entity
            query = ListQuery(kind=TRIAL_COMPONENT, parent=arn, limit=1)
            components = self.ctx.store.list_records(query).records
            if components:
                return components[0]
            raise ValidationException(f"StartArns: '{arn}' has no lineage recorded.")
        raise ValidationException(f"StartArns: '{arn}' is not a known lineage entity.")


def _passes(record: Record, filters: dict[str, Any]) -> bool:
    if filters.get("Types") and entity_type(record) not in filters["Types"]:
        return False
    if filters.get("LineageTypes") and LINEAGE_TYPES[record.kind] not in filters["LineageTypes"]:
        return False
    for member, value, before in (
        ("CreatedBefore", record.creation_time, True),
        ("CreatedAfter", record.creation_time, False),
        ("ModifiedBefore", record.last_modified_time, True),
        ("ModifiedAfter", record.last_modified_time, False),
    ):
        bound = epoch(filters.get(member))
        if bound is not None and (value >= bound if before else value <= bound):
            return False
    properties = record.body.get("Properties") or {}
    return all(properties.get(k) == v for k, v in (filters.get("Properties") or {}).items())


def _fingerprint(request: dict[str, Any]) -> str:
    shown = {k: v for k, v in request.items() if k not in {"NextToken", "MaxResults"}}
    encoded = orjson.dumps(shown, default=str, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:16]


def _encode_offset(request: dict[str, Any], offset: int) -> str:
    payload = orjson.dumps({"o": offset, "q": _fingerprint(request)})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_offset(request: dict[str, Any]) -> int:
    token = request.get("NextToken")
    if not token:
        return 0
    invalid = ValidationException("The NextToken is invalid or does not match this request.")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise invalid from None
    if not isinstance(data, dict) or data.get("q") != _fingerprint(request):
        raise invalid
    offset = data.get("o")
    if not isinstance(offset, int) or offset < 0:
        raise invalid
    return offset


def _association_name(source: str, destination: str) -> str:
    return hashlib.sha256(f"{source}\n{destination}".encode()).hexdigest()[:40]


def _name(name_or_arn: str, kind: str) -> str:
    if name_or_arn.startswith("arn:"):
        return name_or_arn.partition(f":{kind}/")[2] or name_or_arn
    return name_or_arn
