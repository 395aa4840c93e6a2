"""What every page shares: the API client, the templates and their filters, error pages."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from salvia import __version__
from salvia.api.errors import JSON_STATUS
from salvia.errors import SalviaError, ValidationException
from salvia.ui.api import StudioApi, signed_in

PREFIX = "/studio"
_HERE = Path(__file__).parent
TERMINAL = {"Completed", "Failed", "Stopped", "InService", "OutOfService", "Approved", "Rejected"}


def _when(value: Any) -> str:
    if value in (None, ""):
        return "—"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _duration(start: Any, end: Any = None) -> str:
    if not isinstance(start, int | float):
        return "—"
    finish = end if isinstance(end, int | float) else datetime.now(UTC).timestamp()
    seconds = max(0, int(finish - start))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _status_class(status: Any) -> str:
    text = str(status or "")
    if text in {"Completed", "InService", "Approved", "Success"}:
        return "ok"
    if text in {"Failed", "Rejected", "UpdateRollbackFailed", "DeleteFailed", "OutOfService"}:
        return "bad"
    if text in {"Stopped", "Stopping", "Deleting"}:
        return "muted"
    return "busy" if text else ""


def object_path(uri: Any) -> str:
    """Where the same address serves an s3:// object (S3 GetObject, path style); '' if none."""
    text = str(uri or "")
    if not text.startswith("s3://") or text.endswith("/"):
        return ""
    bucket, _, key = text[5:].partition("/")
    if not key:
        return ""
    # signed in (iam mode), Studio fetches it as the user; open, S3 answers unsigned requests
    through = f"{PREFIX}/objects" if signed_in.get() is not None else ""
    return f"{through}/{bucket}/{urllib.parse.quote(key)}"


def _number(value: Any) -> Any:
    """Six significant digits for measured values; anything else as it is."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "—" if value is None else value


def busy(status: Any) -> bool:
    """A status that will change by itself (a job running, an endpoint being created)."""
    return _status_class(status) == "busy"


def _short_arn(arn: Any) -> str:
    text = str(arn or "")
    return text.split(":", 5)[-1] if text.startswith("arn:") else text


CSRF_FIELD = "csrf"


def csrf_field() -> Markup:
    """The hidden field every Studio form posts (empty in open mode, which has no sessions)."""
    caller = signed_in.get()
    if caller is None:
        return Markup("")
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, caller.csrf)


def _csrf_token() -> str:
    caller = signed_in.get()
    return caller.csrf if caller is not None else ""


def _studio_user() -> str:
    caller = signed_in.get()
    return caller.principal.name if caller is not None else ""


class Pages:
    """What every page handler needs: the API and a renderer."""

    def bind(self, handler: Callable[[Pages, Request], Awaitable[Response]]) -> Any:
        """`handler(pages, request)` as a Starlette endpoint."""

        async def view(request: Request) -> Response:
            return await handler(self, request)

        return view

    def __init__(self, api: StudioApi) -> None:
        self.api = api
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            enable_async=False,
            undefined=jinja2.ChainableUndefined,
        )
        self.env.filters.update(
            when=_when,
            duration=_duration,
            status_class=_status_class,
            short_arn=_short_arn,
            object_path=object_path,
            num=_number,
        )
        self.env.globals.update(
            prefix=PREFIX,
            salvia_version=__version__,
            terminal=TERMINAL,
            csrf_field=csrf_field,
            csrf_token=_csrf_token,
            studio_user=_studio_user,
        )

    def render(
        self, request: Request, template: str, http_status: int = 200, **context: Any
    ) -> Response:
        html = self.env.get_template(template).render(request=request, **context)
        return HTMLResponse(html, status_code=http_status)

    def error(self, request: Request, error: SalviaError) -> Response:
        status = JSON_STATUS.get(error.code, 400)
        if error.code in {"ResourceNotFound", "ResourceNotFoundException"}:
            status = 404
        elif error.code in {"AccessDeniedException", "AccessDenied"}:
            status = 403
        return self.render(request, "error.html", http_status=status, error=error)


FORM_LIMIT = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """A URL-encoded form (Studio's forms are small and never upload files)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise ValidationException(f"The form exceeds {FORM_LIMIT} bytes.")
    fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}
