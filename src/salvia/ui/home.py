"""Home: how much there is, what happened lately, and what is failing."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from salvia.errors import SalviaError
from salvia.ui.lists import SPECS, value_of
from salvia.ui.pages import Pages

COUNT_CAP = 100  # counts stop here ("100+"): a count costs one page, never a scan
FAMILIES = (
    "training-jobs",
    "tuning-jobs",
    "processing-jobs",
    "transform-jobs",
    "endpoints",
    "models",
    "model-registry",
    "experiments",
)
WATCHED = ("training-jobs", "tuning-jobs", "processing-jobs", "transform-jobs", "endpoints")


async def home(pages: Pages, request: Request) -> Response:
    counts: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    failing: list[dict[str, Any]] = []
    running: list[dict[str, Any]] = []
    errors: list[SalviaError] = []
    for slug in FAMILIES:
        spec = SPECS[slug]
        name_column, *_ = spec.columns
        status_column = next((c.member for c in spec.columns if c.kind == "status"), None)
        try:
            page = await pages.api.sagemaker(spec.operation, MaxResults=COUNT_CAP)
        except SalviaError as error:
            errors.append(error)
            continue
        items = page.get(spec.result_key, [])
        shown = f"{len(items)}+" if page.get("NextToken") else str(len(items))
        counts.append({"slug": slug, "title": spec.title, "count": shown})
        for item in items[:10]:
            recent.append(
                {
                    "slug": slug,
                    "kind": spec.title,
                    "name": value_of(item, name_column.member),
                    "status": value_of(item, status_column) if status_column else None,
                    "time": item.get("LastModifiedTime") or item.get("CreationTime"),
                }
            )
        if slug not in WATCHED or status_column is None:
            continue
        for status, into in (("Failed", failing), ("InProgress", running)):
            if slug == "endpoints":
                status = {"Failed": "Failed", "InProgress": "Creating"}[status]
            try:
                found = await pages.api.sagemaker(
                    spec.operation, StatusEquals=status, MaxResults=10
                )
            except SalviaError as error:
                errors.append(error)
                continue
            for item in found.get(spec.result_key, []):
                into.append(
                    {
                        "slug": slug,
                        "kind": spec.title,
                        "name": value_of(item, name_column.member),
                        "status": status,
                        "reason": item.get("FailureReason"),
                        "time": item.get("LastModifiedTime") or item.get("CreationTime"),
                    }
                )
    recent.sort(key=lambda entry: entry["time"] or 0, reverse=True)
    failing.sort(key=lambda entry: entry["time"] or 0, reverse=True)
    return pages.render(
        request,
        "home.html",
        title="Home",
        refresh="#counts, #failing, #recent",
        live=bool(running),
        counts=counts,
        recent=recent[:15],
        failing=failing,
        running=running,
        errors=errors,
    )


def routes(pages: Pages) -> list[Route]:
    async def view(request: Request) -> Response:
        return await home(pages, request)

    return [Route("/home", view)]
