"""The audit trail on both backends: events read back newest first, by user, and those older
than the retention period deleted by the writer thread."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from salvia.config import load_settings
from salvia.iam import AuditEvent, AuditTrail
from salvia.store.sql import SqlMetadataStore
from tests.conftest import fresh_database

DAY = 86400.0


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[SqlMetadataStore]:
    url, drop = fresh_database(backend)
    opened = SqlMetadataStore(url or f"sqlite:///{tmp_path}/salvia.db")
    yield opened
    opened.close()
    drop()


def _event(user: str, when: float, action: str = "sagemaker:CreateTrainingJob") -> AuditEvent:
    return AuditEvent(when, f"arn:aws:iam::123456789012:user/{user}", user, "AKIA", action,
                      "*", "127.0.0.1", "Success", read_only=False)  # fmt: skip


def test_events_read_back_newest_first_and_by_user(store: SqlMetadataStore) -> None:
    trail = AuditTrail(store, "123456789012", "us-east-1")
    now = time.time()
    for offset, user in enumerate(("alice", "bob", "alice")):
        trail.record(_event(user, now + offset))
    assert [e.user for e in trail.events()] == ["alice", "bob", "alice"]
    assert [e.time for e in trail.events(user="alice")] == [now + 2, now]
    trail.close()


def test_a_burst_of_events_is_written_in_batches_and_none_is_lost(
    store: SqlMetadataStore,
) -> None:
    trail = AuditTrail(store, "123456789012", "us-east-1")
    now = time.time()
    for index in range(1200):
        trail.record(_event(f"user-{index % 7}", now + index / 1000))
    events = list(trail.events())
    assert len(events) == 1200 and len({e.event_id for e in events}) == 1200
    assert [e.time for e in events] == sorted((e.time for e in events), reverse=True)
    trail.close()


def test_create_many_is_all_or_nothing(store: SqlMetadataStore) -> None:
    from salvia.errors import AlreadyExists
    from salvia.store.metadata import Record

    def record(name: str) -> Record:
        return Record(kind="audit-test", name=name, arn=f"arn:test:{name}", creation_time=1.0,
                      last_modified_time=1.0, body={"n": name})  # fmt: skip

    store.create_many([record("a"), record("b")])
    with pytest.raises(AlreadyExists):
        store.create_many([record("c"), record("a")])
    assert store.get("audit-test", "c") is None and store.get("audit-test", "b") is not None


def test_events_older_than_the_retention_period_are_deleted(store: SqlMetadataStore) -> None:
    now = time.time()
    trail = AuditTrail(store, "123456789012", "us-east-1", retention_seconds=30 * DAY)
    trail.record(_event("old", now - 31 * DAY))
    trail.record(_event("recent", now - 29 * DAY))
    trail.flush()
    assert trail.prune() == 1
    assert [e.user for e in trail.events()] == ["recent"]
    trail.close()
    # a server started after a while away prunes at once, in the background
    trail = AuditTrail(store, "123456789012", "us-east-1", retention_seconds=30 * DAY,
                       clock=lambda: now + 2 * DAY)  # fmt: skip
    deadline = time.monotonic() + 30
    while list(trail.events()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(trail.events()) == []
    trail.close()


def test_the_retention_period_is_a_setting(tmp_path: Path) -> None:
    env = {"SALVIA_HOME": str(tmp_path), "SALVIA_AUDIT_RETENTION_DAYS": "7"}
    assert load_settings(env).validate().audit_retention_days == 7.0
    assert load_settings({"SALVIA_HOME": str(tmp_path)}).audit_retention_days == 90.0
    with pytest.raises(ValueError, match="audit_retention_days"):
        load_settings({**env, "SALVIA_AUDIT_RETENTION_DAYS": "0"}).validate()
