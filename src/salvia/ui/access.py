"""Access-control pages: the audit trail (CloudTrail's `LookupEvents`) and Role Manager's
personas, whose ready policies are attached to a user through IAM's own operations, as
`salvia iam personas apply` does."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from salvia.errors import SalviaError
from salvia.iam.personas import PERSONAS, persona_policy_name
from salvia.ui.pages import PREFIX, Pages, read_form

PAGE_SIZE = 50
# how many events one page may look through for refusals before it offers the next page
SCAN_LIMIT = 1000


def _row(event: dict[str, Any]) -> dict[str, Any]:
    detail = json.loads(event.get("CloudTrailEvent") or "{}")
    resources = detail.get("resources") or [{}]
    return {
        "time": event.get("EventTime"),
        "user": event.get("Username") or "",
        "service": str(detail.get("eventSource", "")).split(".")[0],
        "event": event.get("EventName", ""),
        "resource": resources[0].get("ARN", ""),
        "source_ip": detail.get("sourceIPAddress", ""),
        "outcome": detail.get("outcome", ""),
        "message": detail.get("errorMessage", ""),
    }


async def audit(pages: Pages, request: Request) -> Response:
    """Newest first, a page at a time from the API; refusals only when asked (CloudTrail has
    no attribute for the outcome, so a page reads on until it has PAGE_SIZE of them)."""
    query = request.query_params
    user, event_name = query.get("user", "").strip(), query.get("event", "").strip()
    denied = query.get("denied") == "1"
    token = query.get("token") or None
    lookup: dict[str, Any] = {}
    if user:
        lookup["LookupAttributes"] = [{"AttributeKey": "Username", "AttributeValue": user}]
    elif event_name:
        lookup["LookupAttributes"] = [{"AttributeKey": "EventName", "AttributeValue": event_name}]
    rows: list[dict[str, Any]] = []
    scanned = 0
    error: SalviaError | None = None
    try:
        while True:
            page = await pages.api.cloudtrail(
                "LookupEvents", MaxResults=PAGE_SIZE, NextToken=token, **lookup
            )
            events = page.get("Events", [])
            scanned += len(events)
            for row in map(_row, events):
                if event_name and user and row["event"] != event_name:
                    continue
                if denied and row["outcome"] == "Success":
                    continue
                rows.append(row)
            token = page.get("NextToken")
            if not token or len(rows) >= PAGE_SIZE or scanned >= SCAN_LIMIT:
                break
    except SalviaError as refused:
        error, token = refused, None
    state = {"user": user, "event": event_name, "denied": "1" if denied else ""}
    next_link = _link("audit", {**state, "token": token}) if token else ""
    return pages.render(
        request, "audit.html", title="Audit trail", rows=rows, state=state, error=error,
        next_link=next_link, first_link=_link("audit", state) if query.get("token") else "",
        scanned=scanned,
    )  # fmt: skip


def _link(slug: str, params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v}
    return f"{PREFIX}/{slug}" + ("?" + urllib.parse.urlencode(kept) if kept else "")


async def role_manager(pages: Pages, request: Request) -> Response:
    personas = [
        {
            "name": name,
            "policy_name": persona_policy_name(name),
            "summary": summary,
            "document": json.dumps(document, indent=2),
        }
        for name, (summary, document) in PERSONAS.items()
    ]
    users: list[str] = []
    error: SalviaError | None = None
    try:
        listed = await pages.api.iam("ListUsers", MaxItems=1000)
        users = [u["UserName"] for u in listed.get("Users", [])]
    except SalviaError as refused:
        error = refused
    return pages.render(
        request, "role_manager.html", title="Role Manager", personas=personas, users=users,
        users_error=error, notice=request.query_params.get("notice", ""),
    )  # fmt: skip


async def apply_persona(pages: Pages, request: Request) -> Response:
    """The persona's policy, created on first use under its name, attached to the user."""
    form = await read_form(request)
    persona, user = form.get("persona", ""), form.get("user", "").strip()
    if persona not in PERSONAS or not user:
        raise SalviaError("Choose a persona and a user.")
    name = persona_policy_name(persona)
    arn = ""
    marker: str | None = None
    while not arn:
        listed = await pages.api.iam("ListPolicies", Scope="Local", Marker=marker)
        arn = next((p["Arn"] for p in listed.get("Policies", []) if p["PolicyName"] == name), "")
        marker = listed.get("Marker") if listed.get("IsTruncated") else None
        if marker is None:
            break
    if not arn:
        summary, document = PERSONAS[persona]
        created = await pages.api.iam(
            "CreatePolicy", PolicyName=name, PolicyDocument=json.dumps(document),
            Description=summary,
        )  # fmt: skip
        arn = created["Policy"]["Arn"]
    await pages.api.iam("AttachUserPolicy", UserName=user, PolicyArn=arn)
    notice = urllib.parse.quote_plus(f"{user} now has {name} ({persona}).")
    return RedirectResponse(f"{PREFIX}/role-manager?notice={notice}", status_code=303)


def routes(pages: Pages) -> list[Route]:
    return [
        Route("/audit", pages.bind(audit)),
        Route("/role-manager", pages.bind(role_manager)),
        Route("/role-manager/apply", pages.bind(apply_persona), methods=["POST"]),
    ]
