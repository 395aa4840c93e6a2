"""`SqlMetadataStore`: the metadata store on SQLAlchemy 2 Core (SQLite by default, PostgreSQL)."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool

from salvia.errors import AlreadyExists, ThrottlingException
from salvia.store import schema
from salvia.store.metadata import (
    SORT_COLUMNS,
    ListQuery,
    MetadataStore,
    MetricPoint,
    MetricSummary,
    Page,
    Record,
)
from salvia.store.migrate import upgrade_to_head

R = schema.resources
DENSE_MEMBERS = 1000  # memberships from which a page walks the sort order (see _membership)
_COLUMNS = (
    R.c.id,
    R.c.kind,
    R.c.name,
    R.c.arn,
    R.c.status,
    R.c.parent,
    R.c.creation_time,
    R.c.last_modified_time,
    R.c.body,
)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row_to_record(row: Any) -> Record:
    return Record(
        id=row.id,
        kind=row.kind,
        name=row.name,
        arn=row.arn,
        status=row.status,
        parent=row.parent,
        creation_time=row.creation_time,
        last_modified_time=row.last_modified_time,
        body=orjson.loads(row.body),
    )


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        memory = url in {"sqlite://", "sqlite:///:memory:"}
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            poolclass=StaticPool if memory else None,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class _ThreadConnections:
    """One autocommit driver connection per thread, outside the pool, closed with the store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.local = threading.local()
        self.lock = threading.Lock()
        self.opened: list[Any] = []

    def get(self) -> Any:
        raw: Any = getattr(self.local, "connection", None)
        if raw is None:
            proxied = self.engine.raw_connection()
            raw = proxied.driver_connection
            proxied.detach()  # this thread's own connection from now on
            if self.engine.dialect.name == "sqlite":
                raw.isolation_level = None
            else:
                raw.autocommit = True
            self.local.connection = raw
            with self.lock:
                self.opened.append(raw)
        return raw

    def discard(self) -> None:
        raw: Any = getattr(self.local, "connection", None)
        self.local.connection = None
        with contextlib.suppress(Exception):
            raw.close()

    def close_all(self) -> None:
        with self.lock:
            opened, self.opened = self.opened, []
        for raw in opened:
            with contextlib.suppress(Exception):
                raw.close()


class _Prepared:
    """A select compiled once for the engine's dialect and run on a per-thread connection.

    Describe* is the API's hottest path; skipping SQLAlchemy's statement, pool and result
    machinery for its two lookups doubles the API's throughput. The connection is autocommit,
    so each lookup sees the latest committed state and never holds a transaction open.
    """

    def __init__(self, statement: Select[Any], connections: _ThreadConnections) -> None:
        engine = connections.engine
        compiled = statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self.positional = compiled.positiontup  # None for named paramstyles (psycopg)
        self.errors = engine.dialect.loaded_dbapi.Error
        self.connections = connections

    def first(self, **params: Any) -> Any:
        if self.positional is not None:
            args: Any = tuple(params[name] for name in self.positional)
        else:
            args = params
        try:
            cursor = self.connections.get().cursor()
            try:
                cursor.execute(self.sql, args)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self.errors as exc:
            self.connections.discard()  # a broken connection is replaced on the next call
            raise ThrottlingException(f"The metadata store is busy: {exc}") from exc
        return None if row is None else _Row(*row)


@dataclass(slots=True)
class _Row:
    id: int
    kind: str
    name: str
    arn: str
    status: str | None
    parent: str | None
    creation_time: float
    last_modified_time: float
    body: str


def _row(record: Record) -> dict[str, Any]:
    """A new record's columns."""
    return {
        "kind": record.kind,
        "name_key": record.name_key,
        "name": record.name,
        "arn": record.arn,
        "status": record.status,
        "parent": record.parent,
        "creation_time": record.creation_time,
        "last_modified_time": record.last_modified_time,
        "body": orjson.dumps(record.body).decode(),
    }


class SqlMetadataStore(MetadataStore):
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self._engine = make_engine(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        # SQLite has one writer at a time; serializing our own writers in-process avoids
        # "database is locked" upgrades from read to write transactions under load.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self._sqlite else contextlib.nullcontext()
        )
        if migrate:
            upgrade_to_head(self._engine)
        # Describe* is the hottest path of the API: its two lookups are compiled to SQL once
        # and run as plain driver statements, skipping SQLAlchemy's per-call statement work.
        by_name = select(*_COLUMNS).where(
            R.c.kind == bindparam("kind"), R.c.name_key == bindparam("name_key")
        )
        by_arn = select(*_COLUMNS).where(R.c.arn == bindparam("arn"))
        self._connections = _ThreadConnections(self._engine)
        self._get_by_name = _Prepared(by_name, self._connections)
        self._get_by_arn = _Prepared(by_arn, self._connections)

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self._write_lock, self._engine.begin() as conn:
                yield conn
        except OperationalError as exc:  # lock timeouts, lost connections: retryable
            raise ThrottlingException(f"The metadata store is busy: {exc.orig}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise ThrottlingException(f"The metadata store is busy: {exc.orig}") from exc

    # records -------------------------------------------------------------------------------

    def create(self, record: Record, tags: Sequence[tuple[str, str]] = ()) -> Record:
        try:
            with self._write() as conn:
                result = conn.execute(insert(R).values(**_row(record)).returning(R.c.id))
                record.id = result.scalar_one()
                if tags:
                    self._set_tags(conn, record.arn, tags)
        except IntegrityError as exc:
            raise AlreadyExists(f"{record.kind} {record.name!r} already exists") from exc
        return record

    def create_many(self, records: Sequence[Record]) -> None:
        rows = [_row(record) for record in records]
        if not rows:
            return
        try:
            with self._write() as conn:
                conn.execute(insert(R), rows)
        except IntegrityError as exc:
            raise AlreadyExists(f"one of {len(rows)} records already exists") from exc

    def get(self, kind: str, name: str) -> Record | None:
        row = self._get_by_name.first(kind=kind, name_key=name.lower())
        return _row_to_record(row) if row else None

    def get_by_arn(self, arn: str) -> Record | None:
        row = self._get_by_arn.first(arn=arn)
        return _row_to_record(row) if row else None

    def update(
        self, kind: str, name: str, mutate: Callable[[Record], None], modified_time: float
    ) -> Record | None:
        query = select(*_COLUMNS).where(R.c.kind == kind, R.c.name_key == name.lower())
        if not self._sqlite:
            query = query.with_for_update()
        with self._write() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            record = _row_to_record(row)
            mutate(record)
            record.last_modified_time = modified_time
            conn.execute(
                update(R)
                .where(R.c.id == record.id)
                .values(
                    status=record.status,
                    parent=record.parent,
                    last_modified_time=modified_time,
                    body=orjson.dumps(record.body).decode(),
                )
            )
        return record

    def delete(self, kind: str, name: str) -> Record | None:
        query = select(*_COLUMNS).where(R.c.kind == kind, R.c.name_key == name.lower())
        with self._write() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            record = _row_to_record(row)
            conn.execute(delete(R).where(R.c.id == record.id))
            conn.execute(delete(schema.tags).where(schema.tags.c.arn == record.arn))
            conn.execute(delete(schema.metrics).where(schema.metrics.c.arn == record.arn))
            a = schema.associations
            conn.execute(
                delete(a).where(or_(a.c.source == record.arn, a.c.destination == record.arn))
            )
        return record

    def list_records(self, query: ListQuery) -> Page:
        if query.sort_by not in SORT_COLUMNS:
            raise ValueError(f"cannot sort by {query.sort_by!r}")
        column: Any = R.c[query.sort_by]
        if query.sort_by == "status":
            # a literal '' (not a bound parameter), so the expression index of 0002 matches it
            column = func.coalesce(column, literal_column("''"))
        conditions = [R.c.kind == query.kind]
        if query.name_contains:
            pattern = f"%{_escape_like(query.name_contains.lower())}%"
            conditions.append(R.c.name_key.like(pattern, escape="\\"))
        if query.created_after is not None:
            conditions.append(R.c.creation_time > query.created_after)
        if query.created_before is not None:
            conditions.append(R.c.creation_time < query.created_before)
        if query.modified_after is not None:
            conditions.append(R.c.last_modified_time > query.modified_after)
        if query.modified_before is not None:
            conditions.append(R.c.last_modified_time < query.modified_before)
        if query.status is not None:
            conditions.append(R.c.status == query.status)
        if query.parent is not None:
            conditions.append(R.c.parent == query.parent)
        if query.arns is not None:
            conditions.append(R.c.arn.in_(list(query.arns)))
        if query.member_of is not None:
            conditions.append(self._membership(*query.member_of))
        if query.after is not None:
            value, last_id = query.after
            if query.descending:
                conditions.append(tuple_(column, R.c.id) < tuple_(value, last_id))
            else:
                conditions.append(tuple_(column, R.c.id) > tuple_(value, last_id))
        order = (column.desc(), R.c.id.desc()) if query.descending else (column, R.c.id)
        statement = (
            select(*_COLUMNS, column.label("sort_value"))
            .where(and_(*conditions))
            .order_by(*order)
            .limit(query.limit + 1)
        )
        with self._read() as conn:
            rows = conn.execute(statement).all()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        cursor = (rows[-1].sort_value, rows[-1].id) if more and rows else None
        return Page(records=[_row_to_record(row) for row in rows], next_cursor=cursor)

    def _membership(self, association: str, destinations: Sequence[str]) -> Any:
        """Rows that are the source of such an association. With many members, a page walks
        the sort order and probes each row's membership (a few rows per member shown); with
        few, an IN over the members, which a planner with statistics drives from the members
        and which is cheaper to probe where it walks instead (SQLite without ANALYZE: a kind
        of 50,000 rows with a handful of members costs ~10 ms). The count is read off an index.
        """
        a = schema.associations
        matches = and_(a.c.kind == association, a.c.destination.in_(list(destinations)))
        with self._read() as conn:
            members = conn.execute(select(func.count()).select_from(a).where(matches)).scalar()
        if (members or 0) >= DENSE_MEMBERS:
            return exists().where(a.c.source == R.c.arn, matches)
        return R.c.arn.in_(select(a.c.source).where(matches))

    # tags ----------------------------------------------------------------------------------

    def get_tags(self, arn: str) -> list[tuple[str, str]]:
        t = schema.tags
        query = select(t.c.key, t.c.value).where(t.c.arn == arn).order_by(t.c.position, t.c.key)
        with self._read() as conn:
            return [(row.key, row.value) for row in conn.execute(query)]

    def set_tags(self, arn: str, tags: Sequence[tuple[str, str]]) -> None:
        with self._write() as conn:
            self._set_tags(conn, arn, tags)

    @staticmethod
    def _set_tags(conn: Connection, arn: str, tags: Sequence[tuple[str, str]]) -> None:
        t = schema.tags
        latest = dict(tags)  # the last value given for a key wins, as in AddTags
        existing = {
            row.key: row.position
            for row in conn.execute(select(t.c.key, t.c.position).where(t.c.arn == arn))
        }
        position = max(existing.values(), default=-1)
        for key, value in latest.items():
            if key in existing:
                conn.execute(update(t).where(t.c.arn == arn, t.c.key == key).values(value=value))
            else:
                position += 1
                conn.execute(insert(t).values(arn=arn, key=key, value=value, position=position))

    def delete_tags(self, arn: str, keys: Sequence[str]) -> None:
        t = schema.tags
        with self._write() as conn:
            conn.execute(delete(t).where(t.c.arn == arn, t.c.key.in_(list(keys))))

    # associations --------------------------------------------------------------------------

    def associate(self, source: str, destination: str, kind: str, created: float) -> bool:
        a = schema.associations
        try:
            with self._write() as conn:
                conn.execute(
                    insert(a).values(
                        source=source, destination=destination, kind=kind, creation_time=created
                    )
                )
        except IntegrityError:
            return False
        return True

    def disassociate(self, source: str, destination: str, kind: str) -> bool:
        a = schema.associations
        with self._write() as conn:
            result = conn.execute(
                delete(a).where(
                    a.c.source == source, a.c.destination == destination, a.c.kind == kind
                )
            )
        return result.rowcount > 0

    def associated(
        self, kind: str, *, sources: Sequence[str] = (), destinations: Sequence[str] = ()
    ) -> list[tuple[str, str]]:
        a = schema.associations
        ends = []
        if sources:
            ends.append(a.c.source.in_(list(sources)))
        if destinations:
            ends.append(a.c.destination.in_(list(destinations)))
        if not ends:
            return []
        query = (
            select(a.c.source, a.c.destination)
            .where(a.c.kind == kind, or_(*ends))
            .order_by(a.c.creation_time)
        )
        with self._read() as conn:
            return [(row.source, row.destination) for row in conn.execute(query)]

    # metrics -------------------------------------------------------------------------------

    def put_metrics(self, arn: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        rows = [
            {"arn": arn, "name": p.name, "timestamp": p.timestamp, "step": p.step, "value": p.value}
            for p in points
        ]
        with self._write() as conn:
            conn.execute(insert(schema.metrics), rows)

    def get_metrics(self, arn: str, name: str) -> list[MetricPoint]:
        m = schema.metrics
        query = (
            select(m.c.name, m.c.timestamp, m.c.value, m.c.step)
            .where(m.c.arn == arn, m.c.name == name)
            .order_by(m.c.timestamp, m.c.step, m.c.id)
        )
        with self._read() as conn:
            return [
                MetricPoint(name=r.name, timestamp=r.timestamp, value=r.value, step=r.step)
                for r in conn.execute(query)
            ]

    def summarize_metrics(self, arn: str) -> list[MetricSummary]:
        m = schema.metrics
        aggregates = (
            select(
                m.c.name,
                func.count().label("points"),
                func.min(m.c.value).label("minimum"),
                func.max(m.c.value).label("maximum"),
                func.avg(m.c.value).label("average"),
                func.sum(m.c.value * m.c.value).label("squares"),
            )
            .where(m.c.arn == arn)
            .group_by(m.c.name)
            .order_by(m.c.name)
        )
        summaries = []
        with self._read() as conn:
            for row in conn.execute(aggregates):
                last = conn.execute(
                    select(m.c.value, m.c.timestamp)
                    .where(m.c.arn == arn, m.c.name == row.name)
                    .order_by(m.c.timestamp.desc(), m.c.id.desc())
                    .limit(1)
                ).one()
                mean = float(row.average)
                variance = float(row.squares) / row.points - mean * mean if row.points > 1 else 0.0
                sample = variance * row.points / (row.points - 1) if row.points > 1 else 0.0
                summaries.append(
                    MetricSummary(
                        name=row.name,
                        count=row.points,
                        minimum=row.minimum,
                        maximum=row.maximum,
                        average=mean,
                        std_dev=math.sqrt(max(sample, 0.0)),
                        last=last.value,
                        last_timestamp=last.timestamp,
                    )
                )
        return summaries

    def close(self) -> None:
        self._connections.close_all()
        self._engine.dispose()
