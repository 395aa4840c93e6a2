"""`Search`: SageMaker's query language over the properties of any searchable resource.

A family makes a resource type searchable by giving a `Searchable`: its store kind, the member
of `SearchRecord` that carries it, and a function from a record to its `Document`. Expensive
members of a document (tags, parents, metric summaries) are computed only when a filter, the
sort, or a returned result needs them.

Property names are dotted paths: `TrialComponentName`, `Parents.TrialName` (any parent),
`Parameters.lr` (the parameter's value), `Metrics.loss.Max`, `Tags.team`,
`InputArtifacts.train.Value`. Results are paged by keyset over (sort value, id), so a listing
neither repeats nor loses a result that existed when it started.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from salvia.clock import parse_timestamp
from salvia.errors import NotImplementedOperation, ValidationException
from salvia.resources.common import ResourceContext
from salvia.resources.registry import operation
from salvia.store.metadata import ListQuery, Record

_MISSING = object()


class Document:
    """A resource's searchable description; `lazy` members are computed on first use."""

    def __init__(
        self, record: Record, members: dict[str, Any], lazy: Mapping[str, Callable[[], Any]]
    ) -> None:
        self.record = record
        self._members = members
        self._lazy = dict(lazy)

    def get(self, member: str) -> Any:
        if member in self._lazy:
            self._members[member] = self._lazy.pop(member)()
        return self._members.get(member)

    def full(self) -> dict[str, Any]:
        for member in list(self._lazy):
            self.get(member)
        return self._members


@dataclass(frozen=True)
class Searchable:
    kind: str
    record_member: str  # the member of SearchRecord, e.g. "TrialComponent"
    document: Callable[[Record], Document]


def _step(value: Any, segment: str) -> list[Any]:
    """One path segment applied to one value; lists answer for any of their elements."""
    if isinstance(value, list):
        if value and isinstance(value[0], dict) and "Key" in value[0] and "Value" in value[0]:
            return [tag["Value"] for tag in value if tag.get("Key") == segment]  # Tags.<key>
        if value and isinstance(value[0], dict) and "MetricName" in value[0]:
            return [m for m in value if m.get("MetricName") == segment]  # Metrics.<name>
        return [found for item in value for found in _step(item, segment)]
    if isinstance(value, dict) and segment in value:
        found = value[segment]
        if isinstance(found, dict) and len(found) == 1:  # Parameters.<name> -> its value
            (only,) = found.items()
            if only[0] in {"StringValue", "NumberValue"}:
                return [only[1]]
        return [found]
    return []


def resolve(document: Document, path: str) -> list[Any]:
    head, *rest = path.split(".")
    values = [] if (first := document.get(head)) is None else [first]
    for segment in rest:
        values = [found for value in values for found in _step(value, segment)]
    return [value for value in values if value is not None]


def _coerce(candidate: Any, text: str, path: str) -> Any:
    """The filter's text as the candidate's type; _MISSING when it cannot be one."""
    if isinstance(candidate, bool):
        return {"true": True, "false": False}.get(text.lower(), _MISSING)
    if isinstance(candidate, int | float):
        if path.split(".")[-1].endswith("Time"):
            moment = parse_timestamp(text) or parse_timestamp(_number(text))
            return moment.timestamp() if moment else _MISSING
        number = _number(text)
        return number if number is not None else _MISSING
    return text


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": lambda a, b: a == b,
    "GreaterThan": lambda a, b: a > b,
    "GreaterThanOrEqualTo": lambda a, b: a >= b,
    "LessThan": lambda a, b: a < b,
    "LessThanOrEqualTo": lambda a, b: a <= b,
}


def _matches(candidates: list[Any], op: str, value: str | None, path: str) -> bool:
    if op == "Exists":
        return bool(candidates)
    if op == "NotExists":
        return not candidates
    if value is None:
        raise ValidationException(f"Filter on '{path}' with operator {op} needs a Value.")
    if op == "Contains":
        return any(isinstance(c, str) and value.lower() in c.lower() for c in candidates)
    if op == "In":
        options = [option.strip() for option in value.split(",")]
        return any(_coerce(c, option, path) == c for c in candidates for option in options)
    if op == "NotEquals":
        return bool(candidates) and all(_coerce(c, value, path) != c for c in candidates)
    compare = _COMPARE[op]
    for candidate in candidates:
        target = _coerce(candidate, value, path)
        if target is not _MISSING and _comparable(candidate, target) and compare(candidate, target):
            return True
    return False


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b)


def _filter_ok(document: Document, spec: dict[str, Any]) -> bool:
    name = spec["Name"]
    return _matches(
        resolve(document, name), spec.get("Operator", "Equals"), spec.get("Value"), name
    )


def _nested_ok(document: Document, nested: dict[str, Any]) -> bool:
    """Every filter must hold for the same element of the nested list (e.g. one parent)."""
    prefix = nested["NestedPropertyName"]
    elements = document.get(prefix.split(".")[0]) or []
    for element in elements if isinstance(elements, list) else [elements]:
        single = Document(document.record, {prefix: [element]}, {})
        if all(_filter_ok(single, spec) for spec in nested["Filters"]):
            return True
    return False


def evaluate(document: Document, expression: dict[str, Any]) -> bool:
    results: Iterator[bool] = (
        *(_filter_ok(document, spec) for spec in expression.get("Filters", [])),
        *(_nested_ok(document, nested) for nested in expression.get("NestedFilters", [])),
        *(evaluate(document, sub) for sub in expression.get("SubExpressions", [])),
    ).__iter__()
    if expression.get("Operator", "And") == "Or":
        return any(results)
    return all(results)


def _sort_key(document: Document, sort_by: str) -> tuple[int, Any]:
    values = resolve(document, sort_by)
    value = values[0] if values else None
    if isinstance(value, bool | int | float):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, "")  # missing or unsortable: always last


class Search:
    def __init__(self, ctx: ResourceContext, searchables: Mapping[str, Searchable]) -> None:
        self.ctx = ctx
        self.searchables = dict(searchables)

    def _documents(self, searchable: Searchable) -> Iterator[Document]:
        query = ListQuery(kind=searchable.kind, descending=False, limit=500)
        while True:
            page = self.ctx.store.list_records(query)
            yield from (searchable.document(record) for record in page.records)
            if page.next_cursor is None:
                return
            query.after = page.next_cursor

    @operation("Search")
    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        resource = request["Resource"]
        searchable = self.searchables.get(resource)
        if searchable is None:
            raise NotImplementedOperation(
                "Search", detail=f"Search over {resource} is not implemented by Salvia yet."
            )
        expression = request.get("SearchExpression", {})
        sort_by = request.get("SortBy", "LastModifiedTime")
        descending = request.get("SortOrder", "Descending") == "Descending"
        fingerprint = hashlib.sha256(
            orjson.dumps([resource, expression, sort_by, descending], option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:16]
        after = _decode(request.get("NextToken"), fingerprint)

        hits = [doc for doc in self._documents(searchable) if evaluate(doc, expression)]
        keyed: list[tuple[tuple[int, Any, int], Document]] = [
            ((*_sort_key(doc, sort_by), doc.record.id or 0), doc) for doc in hits
        ]

        def compare(
            a: tuple[tuple[int, Any, int], Document], b: tuple[tuple[int, Any, int], Document]
        ) -> int:
            return _listing_order(a[0], b[0], descending)

        ordered = sorted(keyed, key=functools.cmp_to_key(compare))
        start = 0
        if after is not None:
            start = next(
                (
                    i
                    for i, (key, _) in enumerate(ordered)
                    if _listing_order(key, after, descending) > 0
                ),
                len(ordered),
            )
        size = request.get("MaxResults", 10)
        page = ordered[start : start + size]
        response: dict[str, Any] = {
            "Results": [{searchable.record_member: doc.full()} for _, doc in page],
            "TotalHits": {"Value": len(hits), "Relation": "EqualTo"},
        }
        if start + size < len(ordered) and page:
            response["NextToken"] = _encode(page[-1][0], fingerprint)
        return response


def _listing_order(a: tuple[int, Any, int], b: tuple[int, Any, int], descending: bool) -> int:
    """Compare two sort keys (rank, value, id) in the listing's order; missing values last."""
    if (a[0] == 2) != (b[0] == 2):
        return 1 if a[0] == 2 else -1
    if a[0] == 2:
        return (a[2] > b[2]) - (a[2] < b[2])
    cmp = (a > b) - (a < b)
    return -cmp if descending else cmp


def _encode(key: tuple[int, Any, int], fingerprint: str) -> str:
    payload = orjson.dumps({"k": list(key), "q": fingerprint})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode(token: str | None, fingerprint: str) -> tuple[int, Any, int] | None:
    if not token:
        return None
    invalid = ValidationException("The NextToken is invalid or does not match this request.")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise invalid from None
    if not isinstance(data, dict) or data.get("q") != fingerprint:
        raise invalid
    key = data.get("k")
    if not (isinstance(key, list) and len(key) == 3 and isinstance(key[0], int)):
        raise invalid
    return key[0], key[1], key[2]
