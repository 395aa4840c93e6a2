"""The audit trail: every mutating call and every refusal, kept in the metadata store.

Events are `audit-event` records (name: the event id; parent: the user name, so a user's events
list by index; status: the outcome) and read back through CloudTrail's `LookupEvents`. Writing
never holds up a request: events queue to one writer thread, which `flush` waits for. The same
thread deletes events older than the retention period, at start and then hourly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from salvia.store.metadata import ListQuery, MetadataStore, Record

log = logging.getLogger(__name__)

KIND = "audit-event"
PRUNE_EVERY_SECONDS = 3600.0
_PRUNE_BATCH = 500
_WRITE_BATCH = 500  # events per transaction, at most


@dataclass
class AuditEvent:
    time: float
    principal: str  # the caller's ARN ("" when the key was not recognized)
    user: str  # user name or role session; the access key id when the caller is unknown
    access_key: str
    action: str  # "sagemaker:CreateTrainingJob", "s3:PutObject", ...
    resource: str
    source_ip: str
    outcome: str  # "Success", or the error code answered ("AccessDenied", ...)
    read_only: bool
    message: str = ""
    event_id: str = ""

    @property
    def source(self) -> str:
        return self.action.partition(":")[0] + ".amazonaws.com"


class AuditTrail:
    """Appends events in the background; thread-safe."""

    def __init__(
        self,
        store: MetadataStore,
        account: str,
        region: str,
        retention_seconds: float = 90 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.account, self.region = account, region
        self.retention_seconds = retention_seconds
        self.clock = clock
        self._next_prune = 0.0  # at once: a server that was down a while has catching up to do
        self._queue: queue.Queue[AuditEvent | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, event: AuditEvent) -> None:
        event.event_id = event.event_id or str(uuid.uuid4())
        self._queue.put(event)

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)

    def prune(self) -> int:
        """Delete the events older than the retention period; how many went."""
        cutoff = self.clock() - self.retention_seconds
        deleted = 0
        while True:
            page = self.store.list_records(
                ListQuery(kind=KIND, created_before=cutoff, descending=False, limit=_PRUNE_BATCH)
            )
            for record in page.records:
                if self.store.delete(KIND, record.name) is not None:
                    deleted += 1
            if len(page.records) < _PRUNE_BATCH:
                return deleted

    def _prune_when_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_SECONDS
        try:
            deleted = self.prune()
        except Exception:
            log.exception("could not prune the audit trail")
            return
        if deleted:
            log.info("audit trail: %d events older than the retention period deleted", deleted)

    def _write(self) -> None:
        """Events are written in batches of what has queued up meanwhile: one transaction for
        many mutating calls under load, instead of one each."""
        while True:
            self._prune_when_due()
            try:
                first = self._queue.get(timeout=max(0.0, self._next_prune - time.monotonic()))
            except queue.Empty:
                continue
            batch = [first]
            while first is not None and len(batch) < _WRITE_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            events = [e for e in batch if e is not None]
            try:
                self._store_events(events)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(events) < len(batch):
                return

    def _store_events(self, events: list[AuditEvent]) -> None:
        records = [self._record(event) for event in events]
        try:
            self.store.create_many(records)
            return
        except Exception:  # one by one, so that one bad event costs only itself
            pass
        for record in records:
            try:
                self.store.create(record)
            except Exception:
                log.exception("could not write an audit event")

    def _record(self, event: AuditEvent) -> Record:
        return Record(
            kind=KIND,
            name=event.event_id,
            arn=f"arn:aws:cloudtrail:{self.region}:{self.account}:event/{event.event_id}",
            creation_time=event.time,
            last_modified_time=event.time,
            body=asdict(event),
            status=event.outcome,
            parent=event.user.lower() or None,
        )

    def events(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        user: str | None = None,
    ) -> Iterator[AuditEvent]:
        """Events newest first, optionally between two times and of one user."""
        self.flush()
        query = ListQuery(
            kind=KIND,
            created_after=start,
            created_before=end,
            parent=user.lower() if user else None,
            limit=100,
        )
        while True:
            page = self.store.list_records(query)
            for record in page.records:
                yield _event(record.body)
            if page.next_cursor is None:
                return
            query.after = page.next_cursor


def _event(body: dict[str, Any]) -> AuditEvent:
    fields = AuditEvent.__dataclass_fields__
    return AuditEvent(**{k: v for k, v in body.items() if k in fields})
