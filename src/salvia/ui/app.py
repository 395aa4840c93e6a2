"""The Studio application: its routes, static files (plotly.min.js from the plotly wheel), and
the error pages every failure ends on."""

from __future__ import annotations

import importlib.util
import logging
import urllib.parse
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from salvia.errors import SalviaError
from salvia.ui import access, governance, home, hosting, jobs, lists
from salvia.ui.api import StudioApi
from salvia.ui.pages import PREFIX, Pages
from salvia.ui.signin import SignIn, SignInGate

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
_STATIC = {"studio.css": "text/css", "studio.js": "text/javascript"}


def plotly_js() -> Path | None:
    """plotly.min.js as the `plotly` wheel ships it (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


class SameOrigin:
    """Refuses a form posted to Studio from another site (a stop or an approval is a simple
    request, which a browser sends cross-site without asking). Browsers name the posting page's
    origin in `Origin` or `Sec-Fetch-Site`; a client that names neither is not a browser."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            site = headers.get("sec-fetch-site")
            origin = headers.get("origin")
            host = headers.get("host", "")
            cross = site not in (None, "same-origin", "none") or (
                origin is not None and urllib.parse.urlsplit(origin).netloc != host
            )
            if cross:
                refused = PlainTextResponse(
                    "Studio refuses forms posted from another site.", status_code=403
                )
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _static(request: Request) -> Response:
    name = request.path_params["name"]
    headers = {"Cache-Control": "public, max-age=3600"}
    if name == "plotly.min.js":
        path = plotly_js()
        if path is None:
            raise HTTPException(404, "plotly is not installed")
        return FileResponse(path, media_type="text/javascript", headers=headers)
    if name not in _STATIC:
        raise HTTPException(404, f"no static file {name}")
    return FileResponse(_HERE / "static" / name, media_type=_STATIC[name], headers=headers)


class Studio:
    """Studio's ASGI app. `authenticates_users`: it signs its users in itself and calls the API
    as them, so the access guard of the authenticated mode lets its unsigned requests through."""

    def __init__(self, app: ASGIApp, authenticates_users: bool) -> None:
        self.app = app
        self.authenticates_users = authenticates_users

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_studio(api: StudioApi, sign_in: SignIn | None = None) -> Studio:
    """Studio over `api`; with `sign_in` (authenticated mode) every page needs a signed-in
    user, as whom its API calls run."""
    pages = Pages(api)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SalviaError)
        return pages.error(request, exc)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = SalviaError(str(exc.detail))
        error.code = "NotFound" if exc.status_code == 404 else f"HTTP {exc.status_code}"
        return pages.render(request, "error.html", http_status=exc.status_code, error=error)

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("Studio page %s failed", request.url.path, exc_info=exc)
        error = SalviaError(f"An internal error occurred: {type(exc).__name__}: {exc}")
        return pages.render(request, "error.html", http_status=500, error=error)

    routes: list[BaseRoute] = [
        Route("/", lambda request: RedirectResponse(f"{PREFIX}/home")),
        Route("/static/{name}", _static),
        *home.routes(pages),
        *lists.routes(pages),
        *jobs.routes(pages),
        *hosting.routes(pages),
        *governance.routes(pages),
        *access.routes(pages),
        *(sign_in.routes(pages) if sign_in is not None else []),
    ]
    middleware = [Middleware(SameOrigin)]
    if sign_in is not None:
        middleware.append(Middleware(SignInGate, sessions=sign_in.sessions))
    app = Starlette(
        routes=[
            Mount(PREFIX, routes=routes),
            Route(PREFIX, lambda r: RedirectResponse(f"{PREFIX}/home")),
        ],
        middleware=[*middleware, Middleware(GZipMiddleware, minimum_size=2048)],
        exception_handlers={SalviaError: api_error, HTTPException: not_found, Exception: internal},
    )
    return Studio(app, authenticates_users=sign_in is not None)
