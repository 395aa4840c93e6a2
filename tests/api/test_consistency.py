"""Pagination under concurrent inserts, concurrent writers, and state that survives a restart."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from tests.conftest import SalviaServer


def insert_until(
    server: SalviaServer, prefix: str, stop: threading.Event, inserted: list[str]
) -> None:
    writer = server.client()
    while not stop.is_set() and len(inserted) < 200:
        name = f"new-{prefix}-{len(inserted):03d}"
        writer.create_experiment(ExperimentName=name)
        inserted.append(name)


def test_pagination_across_250_items_with_concurrent_inserts(own_server: SalviaServer) -> None:
    sm = own_server.client()
    existing = {f"page-{i:03d}" for i in range(250)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: sm.create_experiment(ExperimentName=name), sorted(existing)))

    for sort_by, order in [
        ("CreationTime", "Descending"),
        ("CreationTime", "Ascending"),
        ("Name", "Ascending"),
        ("Name", "Descending"),
    ]:
        stop = threading.Event()
        inserted: list[str] = []

        prefix = f"{sort_by}-{order}".lower()
        thread = threading.Thread(target=insert_until, args=(own_server, prefix, stop, inserted))
        thread.start()
        seen: list[str] = []
        try:
            kwargs: dict[str, Any] = {"MaxResults": 7, "SortBy": sort_by, "SortOrder": order}
            while True:
                page = sm.list_experiments(**kwargs)
                seen.extend(e["ExperimentName"] for e in page["ExperimentSummaries"])
                if "NextToken" not in page:
                    break
                kwargs["NextToken"] = page["NextToken"]
        finally:
            stop.set()
            thread.join()
        assert len(seen) == len(set(seen)), f"{sort_by} {order}: an item was repeated"
        assert existing <= set(seen), f"{sort_by} {order}: lost {sorted(existing - set(seen))}"
        assert inserted, "the concurrent writer never ran"


def test_paginator_and_token_misuse(own_server: SalviaServer) -> None:
    sm = own_server.client()
    for i in range(25):
        sm.create_experiment(ExperimentName=f"pg-{i:02d}")
    pages = list(sm.get_paginator("list_experiments").paginate(PaginationConfig={"PageSize": 10}))
    assert [len(p["ExperimentSummaries"]) for p in pages] == [10, 10, 5]
    assert "NextToken" not in pages[-1]
    token = pages[0]["NextToken"]
    for bad in ("garbage", token[:-3]):
        try:
            sm.list_experiments(NextToken=bad)
        except ClientError as error:
            assert error.response["Error"]["Code"] == "ValidationException"
        else:
            raise AssertionError(f"token {bad!r} was accepted")
    try:  # a token is bound to the query that issued it
        sm.list_experiments(NextToken=token, SortBy="Name")
    except ClientError as error:
        assert error.response["Error"]["Code"] == "ValidationException"
    else:
        raise AssertionError("a token was accepted for another query")


def test_twenty_threads_creating_and_listing(own_server: SalviaServer) -> None:
    per_thread = 15
    failures: list[str] = []

    def work(worker: int) -> list[str]:
        sm = own_server.client(max_pool_connections=2)
        created = []
        for i in range(per_thread):
            name = f"w{worker:02d}-{i:02d}"
            try:
                sm.create_experiment(ExperimentName=name)
                created.append(name)
                sm.list_experiments(MaxResults=20)
                sm.describe_experiment(ExperimentName=name)
            except ClientError as error:
                failures.append(f"{name}: {error.response['Error']}")
        return created

    with ThreadPoolExecutor(20) as pool:
        created = [name for names in pool.map(work, range(20)) for name in names]
    assert failures == []
    listed = {
        e["ExperimentName"]
        for page in own_server.client().get_paginator("list_experiments").paginate()
        for e in page["ExperimentSummaries"]
    }
    assert len(created) == 20 * per_thread
    assert listed == set(created)


def test_state_survives_a_restart(own_server: SalviaServer) -> None:
    sm = own_server.client()
    arn = sm.create_experiment(
        ExperimentName="durable", Description="kept", Tags=[{"Key": "k", "Value": "v"}]
    )["ExperimentArn"]
    sm.create_trial(TrialName="durable-trial", ExperimentName="durable")
    before = sm.describe_experiment(ExperimentName="durable")

    assert own_server.stop() == 0  # SIGTERM shuts down cleanly
    own_server.start()

    sm = own_server.client()
    after = sm.describe_experiment(ExperimentName="durable")
    for member in ("ExperimentArn", "Description", "CreationTime", "LastModifiedTime"):
        assert after[member] == before[member]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "k", "Value": "v"}]
    assert sm.describe_trial(TrialName="durable-trial")["ExperimentName"] == "durable"
