"""Pages of a list whose filter the store cannot express (a member inside the record's body).

The store's keyset pages are walked and filtered here; the NextToken is the cursor of the last
record returned, so pages stay exact however many records the filter skips.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from salvia.resources.common import ResourceContext, encode_token
from salvia.store.metadata import ListQuery, Record


def _cursor(query: ListQuery, record: Record) -> tuple[Any, int]:
    value = getattr(record, query.sort_by)
    if query.sort_by == "status":
        value = value or ""
    return value, int(record.id or 0)


def filtered_page(
    ctx: ResourceContext,
    query: ListQuery,
    wanted: Callable[[Record], bool],
    result_key: str,
    summarize: Callable[[Record], dict[str, Any]],
) -> dict[str, Any]:
    found: list[Record] = []
    scan = replace(query, limit=100)
    more = False
    while True:
        page = ctx.store.list_records(scan)
        for record in page.records:
            if not wanted(record):
                continue
            if len(found) == query.limit:
                more = True
                break
            found.append(record)
        if more or page.next_cursor is None:
            break
        scan.after = page.next_cursor
    response: dict[str, Any] = {result_key: [summarize(record) for record in found]}
    if more and found:
        response["NextToken"] = encode_token(query, _cursor(query, found[-1]))
    return response
