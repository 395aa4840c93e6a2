"""The metadata store: every resource's record, tags, associations and logged metrics.

Resources of every family share one record shape (`Record`): the columns every SageMaker list
operation filters or sorts on, plus `body`, the family's own description as a JSON object. A
family never needs a schema change to add a field; a new column is added only when lists must
filter or sort on it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SORT_COLUMNS = ("creation_time", "name", "status", "last_modified_time")


@dataclass(slots=True)
class Record:
    """One resource. `name_key` (the name lower-cased) is unique per kind, like SageMaker names."""

    kind: str
    name: str
    arn: str
    creation_time: float
    last_modified_time: float
    body: dict[str, Any]
    status: str | None = None
    parent: str | None = None  # the owning resource's name key or ARN, kind-specific
    id: int | None = None  # assigned by the store; orders rows created in the same instant

    @property
    def name_key(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class ListQuery:
    """A filtered, sorted page of one kind. `after` is the cursor of the last row already seen."""

    kind: str
    name_contains: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    modified_after: float | None = None
    modified_before: float | None = None
    status: str | None = None
    parent: str | None = None
    arns: Sequence[str] | None = None  # restrict to these ARNs (e.g. members of an association)
    # restrict to the sources of associations (kind, any of these destinations), in the query
    member_of: tuple[str, Sequence[str]] | None = None
    sort_by: str = "creation_time"
    descending: bool = True
    limit: int = 100
    after: tuple[Any, int] | None = None


@dataclass(slots=True)
class Page:
    records: list[Record]
    # cursor of the last record when more rows follow, else None
    next_cursor: tuple[Any, int] | None = None


@dataclass(slots=True)
class MetricPoint:
    name: str
    timestamp: float
    value: float
    step: int | None = None


@dataclass(slots=True)
class MetricSummary:
    name: str
    count: int
    minimum: float
    maximum: float
    average: float
    std_dev: float
    last: float
    last_timestamp: float


class MetadataStore(abc.ABC):
    """Durable metadata of every resource.

    Contract, shared by every implementation and checked by `tests/store/test_metadata_store.py`:
    - Thread-safe: one instance serves every request thread of the server.
    - Each call is atomic; `update` applies its mutation under a row lock (read, mutate, write)
      so concurrent updates of one record never lose each other's changes.
    - Records returned are copies: mutating them changes nothing until `update`.
    - `list` pages by keyset over (sort column, id): rows that exist when a listing starts are
      each returned exactly once across its pages, whatever is inserted meanwhile.
    - Names are unique per kind, case-insensitively; `create` raises `AlreadyExists` otherwise.
    """

    @abc.abstractmethod
    def create(self, record: Record, tags: Sequence[tuple[str, str]] = ()) -> Record:
        """Insert a new record (and its tags) in one transaction."""

    def create_many(self, records: Sequence[Record]) -> None:
        """Insert new records (without tags) in one transaction: all of them, or none when one
        of their names is taken (`AlreadyExists`). For appending logs of events in batches."""
        for record in records:  # implementations do better in one statement
            self.create(record)

    @abc.abstractmethod
    def get(self, kind: str, name: str) -> Record | None: ...

    @abc.abstractmethod
    def get_by_arn(self, arn: str) -> Record | None: ...

    @abc.abstractmethod
    def update(
        self, kind: str, name: str, mutate: Callable[[Record], None], modified_time: float
    ) -> Record | None:
        """Apply `mutate` to the current record and save it; None when the record is gone."""

    @abc.abstractmethod
    def delete(self, kind: str, name: str) -> Record | None:
        """Delete a record with its tags, associations and metrics; the deleted record or None."""

    @abc.abstractmethod
    def list_records(self, query: ListQuery) -> Page: ...

    # Tags, keyed by ARN. `set_tags` overwrites values of existing keys.
    @abc.abstractmethod
    def get_tags(self, arn: str) -> list[tuple[str, str]]: ...

    @abc.abstractmethod
    def set_tags(self, arn: str, tags: Sequence[tuple[str, str]]) -> None: ...

    @abc.abstractmethod
    def delete_tags(self, arn: str, keys: Sequence[str]) -> None: ...

    # Associations: directed edges between ARNs (trial component -> trial, lineage later).
    @abc.abstractmethod
    def associate(self, source: str, destination: str, kind: str, created: float) -> bool:
        """Add an edge; False when it already existed."""

    @abc.abstractmethod
    def disassociate(self, source: str, destination: str, kind: str) -> bool:
        """Remove an edge; False when there was none."""

    @abc.abstractmethod
    def associated(
        self, kind: str, *, sources: Sequence[str] = (), destinations: Sequence[str] = ()
    ) -> list[tuple[str, str]]:
        """Edges of `kind` from any of `sources` or to any of `destinations`."""

    # Metrics: time series logged against a resource ARN.
    @abc.abstractmethod
    def put_metrics(self, arn: str, points: Sequence[MetricPoint]) -> None: ...

    @abc.abstractmethod
    def get_metrics(self, arn: str, name: str) -> list[MetricPoint]:
        """All points of one series, ordered by timestamp then step."""

    @abc.abstractmethod
    def summarize_metrics(self, arn: str) -> list[MetricSummary]: ...

    @abc.abstractmethod
    def close(self) -> None: ...
