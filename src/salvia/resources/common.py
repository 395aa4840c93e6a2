"""What every resource family shares: ARNs, times, list filters, pagination and tags on create."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from salvia.clock import Clock
from salvia.config import Settings
from salvia.errors import AlreadyExists, ValidationException
from salvia.store.metadata import ListQuery, MetadataStore, Page, Record

_SORT_COLUMNS = {
    "CreationTime": "creation_time",
    "Name": "name",
    "Status": "status",
    "LastModifiedTime": "last_modified_time",
}


@dataclass(frozen=True)
class ResourceContext:
    """Everything a family needs, passed in (no globals)."""

    settings: Settings
    store: MetadataStore
    clock: Clock

    def arn(self, resource_type: str, name: str) -> str:
        # SageMaker lower-cases the name part of the ARNs it issues.
        return self.settings.arn(resource_type, name.lower())

    def new_record(
        self,
        kind: str,
        name: str,
        body: dict[str, Any],
        *,
        arn_member: str,
        parent: str | None = None,
        status: str | None = None,
    ) -> Record:
        """A record created now, named by its kind's ARN, which `body` carries as `arn_member`."""
        now = self.clock.now()
        arn = self.arn(kind, name)
        return Record(
            kind=kind,
            name=name,
            arn=arn,
            creation_time=now,
            last_modified_time=now,
            body={**body, arn_member: arn},
            parent=parent,
            status=status,
        )


def to_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def name_from(name_or_arn: str, resource_type: str) -> str:
    """Accept a plain name or this resource type's ARN (`...:<type>/<name>`)."""
    if name_or_arn.startswith("arn:"):
        head, _, name = name_or_arn.partition(":" + resource_type + "/")
        if not name or not head:
            raise ValidationException(f"'{name_or_arn}' is not the ARN of a {resource_type}.")
        return name
    return name_or_arn


def tag_list(ctx: ResourceContext, arn: str) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in ctx.store.get_tags(arn)]


def tag_pairs(tags: Sequence[dict[str, str]] | None) -> list[tuple[str, str]]:
    pairs = [(tag["Key"], tag.get("Value", "")) for tag in tags or ()]
    for key, _ in pairs:
        if key.lower().startswith("aws:"):
            raise ValidationException(f"Tag key '{key}' uses the reserved prefix 'aws:'.")
    if len({key for key, _ in pairs}) > 50:
        raise ValidationException("A resource can have at most 50 tags.")
    return pairs


def create_record(
    ctx: ResourceContext,
    record: Record,
    tags: Sequence[dict[str, str]] | None,
    duplicate_message: str,
) -> Record:
    """Insert a record with its tags; a duplicate name answers SageMaker's "already exists"."""
    try:
        return ctx.store.create(record, tag_pairs(tags))
    except AlreadyExists:
        raise ValidationException(duplicate_message) from None


# --- list filters and pagination ------------------------------------------------------------


def _fingerprint(query: ListQuery) -> str:
    """Ties a NextToken to the query that issued it, so it cannot be replayed on another."""
    parts = (
        query.kind,
        query.name_contains,
        query.created_after,
        query.created_before,
        query.modified_after,
        query.modified_before,
        query.status,
        query.parent,
        query.sort_by,
        query.descending,
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def encode_token(query: ListQuery, cursor: tuple[Any, int]) -> str:
    payload = orjson.dumps({"v": cursor[0], "i": cursor[1], "q": _fingerprint(query)})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_token(query: ListQuery, token: str) -> tuple[Any, int]:
    invalid = ValidationException("The NextToken is invalid or does not match this request.")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise invalid from None
    if not isinstance(data, dict) or data.get("q") != _fingerprint(query):
        raise invalid
    value, last_id = data.get("v"), data.get("i")
    if not isinstance(last_id, int) or not isinstance(value, str | int | float):
        raise invalid
    return value, last_id


def list_query(
    kind: str,
    request: dict[str, Any],
    *,
    default_max: int = 10,
    created_after: str = "CreationTimeAfter",
    created_before: str = "CreationTimeBefore",
    **fixed: Any,
) -> ListQuery:
    """Build a store query from SageMaker's common List* members.

    Families differ in what they call the creation-time filters (`CreatedAfter` for
    experiments, `CreationTimeAfter` for jobs); the rest of the names are shared.
    """
    sort_by = request.get("SortBy", "CreationTime")
    if sort_by not in _SORT_COLUMNS:
        raise ValidationException(f"SortBy '{sort_by}' is not supported for this list.")
    query = ListQuery(
        kind=kind,
        name_contains=request.get("NameContains"),
        created_after=epoch(request.get(created_after)),
        created_before=epoch(request.get(created_before)),
        modified_after=epoch(request.get("LastModifiedTimeAfter")),
        modified_before=epoch(request.get("LastModifiedTimeBefore")),
        status=request.get("StatusEquals"),
        sort_by=_SORT_COLUMNS[sort_by],
        descending=request.get("SortOrder", "Descending") == "Descending",
        limit=request.get("MaxResults", default_max),
        **fixed,
    )
    token = request.get("NextToken")
    if token:
        query.after = decode_token(query, token)
    return query


def list_page(
    ctx: ResourceContext,
    query: ListQuery,
    result_key: str,
    summarize: Callable[[Record], dict[str, Any]],
) -> dict[str, Any]:
    page: Page = ctx.store.list_records(query)
    response: dict[str, Any] = {result_key: [summarize(record) for record in page.records]}
    if page.next_cursor is not None:
        response["NextToken"] = encode_token(query, page.next_cursor)
    return response
