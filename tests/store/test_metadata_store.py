"""The MetadataStore contract, run against every implementation and database."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from salvia.errors import AlreadyExists
from salvia.store import sql
from salvia.store.metadata import ListQuery, MetadataStore, MetricPoint, Record
from salvia.store.migrate import StaleSchemaError
from salvia.store.sql import SqlMetadataStore
from tests.conftest import fresh_database


@pytest.fixture
def store(backend: str, tmp_path: pytest.TempPathFactory) -> Iterator[MetadataStore]:
    url, drop = fresh_database(backend)
    instance = SqlMetadataStore(url or f"sqlite:///{tmp_path}/meta.db")
    yield instance
    instance.close()
    drop()


def record(name: str, created: float, kind: str = "thing", **extra: object) -> Record:
    return Record(
        kind=kind,
        name=name,
        arn=f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{name}",
        creation_time=created,
        last_modified_time=created,
        body={"Name": name, **extra},
    )


class TestMetadataStoreContract:
    def test_create_get_and_case_insensitive_uniqueness(self, store: MetadataStore) -> None:
        created = store.create(record("Alpha", 1.0), tags=[("k", "v")])
        assert created.id is not None
        assert store.get("thing", "alpha") == created
        assert store.get_by_arn(created.arn) == created
        assert store.get("other", "alpha") is None
        with pytest.raises(AlreadyExists):
            store.create(record("ALPHA", 2.0))
        assert store.get_tags(created.arn) == [("k", "v")]

    def test_update_is_atomic_under_concurrency(self, store: MetadataStore) -> None:
        store.create(record("counter", 1.0, count=0))

        def bump(r: Record) -> None:
            r.body["count"] += 1

        threads = [
            threading.Thread(
                target=lambda: [store.update("thing", "counter", bump, 2.0) for _ in range(10)]
            )
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = store.get("thing", "counter")
        assert final is not None and final.body["count"] == 80
        assert store.update("thing", "absent", bump, 3.0) is None

    def test_delete_removes_tags_metrics_and_associations(self, store: MetadataStore) -> None:
        a = store.create(record("a", 1.0), tags=[("x", "1")])
        b = store.create(record("b", 2.0))
        assert store.associate(a.arn, b.arn, "link", 3.0) is True
        assert store.associate(a.arn, b.arn, "link", 3.0) is False
        store.put_metrics(a.arn, [MetricPoint("m", 1.0, 0.5, 0)])
        deleted = store.delete("thing", "a")
        assert deleted is not None and deleted.arn == a.arn
        assert store.delete("thing", "a") is None
        assert store.get_tags(a.arn) == [] and store.get_metrics(a.arn, "m") == []
        assert store.associated("link", destinations=[b.arn]) == []

    def test_keyset_pages_survive_inserts(self, store: MetadataStore) -> None:
        for i in range(30):
            store.create(record(f"item-{i:02d}", float(i)))
        query = ListQuery(kind="thing", limit=4, descending=False)
        seen: list[str] = []
        extra = 100
        while True:
            page = store.list_records(query)
            seen += [r.name for r in page.records]
            store.create(record(f"late-{extra}", float(extra)))  # appended after the cursor
            store.create(record(f"early-{extra}", -float(extra)))  # before it: never seen
            extra += 1
            if page.next_cursor is None:
                break
            query.after = page.next_cursor
        items = [name for name in seen if name.startswith("item-")]
        assert items == [f"item-{i:02d}" for i in range(30)]
        assert not any(name.startswith("early-") for name in seen)

    def test_filters(self, store: MetadataStore) -> None:
        for i, name in enumerate(["red-fox", "blue-fox", "red_hen", "Red-Ant"]):
            store.create(record(name, float(i), kind="animal"))

        def names(**filters: object) -> list[str]:
            query = ListQuery(kind="animal", sort_by="name", descending=False, **filters)  # type: ignore[arg-type]
            return [r.name for r in store.list_records(query).records]

        assert names(name_contains="red") == ["Red-Ant", "red-fox", "red_hen"]
        assert names(name_contains="_") == ["red_hen"]  # LIKE wildcards are escaped
        assert names(created_after=0.5, created_before=2.5) == ["blue-fox", "red_hen"]

    @pytest.mark.parametrize("dense_from", [1, 1000], ids=["walk", "members"])
    def test_members_of_an_association_page_by_status_and_name(
        self, store: MetadataStore, dense_from: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sql, "DENSE_MEMBERS", dense_from)  # both plans, same answers
        for i in range(12):
            store.create(record(f"c-{i:02d}", float(i), kind="part"))
        for i in (1, 4, 6, 9, 11):
            store.associate(
                f"arn:aws:sagemaker:us-east-1:123456789012:part/c-{i:02d}", "g1", "In", 1
            )
        store.associate("arn:aws:sagemaker:us-east-1:123456789012:part/c-02", "g2", "In", 1)
        store.associate("arn:aws:sagemaker:us-east-1:123456789012:part/c-03", "g1", "Other", 1)

        def pages(**options: object) -> list[list[str]]:
            query = ListQuery(kind="part", limit=2, **options)  # type: ignore[arg-type]
            found = []
            while True:
                page = store.list_records(query)
                found.append([r.name for r in page.records])
                if page.next_cursor is None:
                    return found
                query.after = page.next_cursor

        assert pages(member_of=("In", ["g1"])) == [["c-11", "c-09"], ["c-06", "c-04"], ["c-01"]]
        assert pages(member_of=("In", ["g1", "g2"]), sort_by="name", descending=False) == [
            ["c-01", "c-02"],
            ["c-04", "c-06"],
            ["c-09", "c-11"],
        ]
        assert pages(member_of=("In", ["nothing"])) == [[]]
        by_status = ListQuery(kind="part", sort_by="status", limit=20)
        assert len(store.list_records(by_status).records) == 12

    def test_metrics_summary(self, store: MetadataStore) -> None:
        r = store.create(record("run", 1.0))
        store.put_metrics(
            r.arn, [MetricPoint("loss", float(t), v, t) for t, v in enumerate([4.0, 2.0, 3.0])]
        )
        (summary,) = store.summarize_metrics(r.arn)
        assert (summary.count, summary.minimum, summary.maximum) == (3, 2.0, 4.0)
        assert summary.last == 3.0 and summary.average == pytest.approx(3.0)
        assert summary.std_dev == pytest.approx(1.0)


def test_a_newer_schema_is_refused(tmp_path: pytest.TempPathFactory) -> None:
    url = f"sqlite:///{tmp_path}/meta.db"
    SqlMetadataStore(url).close()
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StaleSchemaError):
        SqlMetadataStore(url)
