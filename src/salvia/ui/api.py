"""Studio's only way to the platform: the public API's operations, called in process.

Each call goes through the protocol objects the HTTP server dispatches to (`JsonProtocol.call`,
`RestJsonProtocol.call`): the same validation against botocore's model, the same handlers and the
same shaped answers (timestamps as epoch seconds) as a boto3 client gets. Errors arrive as the
`SalviaError` the wire would have carried, so pages can show their code and message.

In authenticated mode each call is first authorized as the signed-in user of the page being
served (`signed_in`), by the access guard's own policy evaluation (`authorize_in_process`), and
runs with that user as the caller; a refusal arrives as AccessDeniedException with the guard's
words, and mutating calls and refusals go to the audit trail as a signed request's would.
"""

from __future__ import annotations

import contextvars
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from salvia.api.json_protocol import JsonProtocol
from salvia.api.rest_protocol import RestJsonProtocol
from salvia.api.sigv4_claims import SignatureRefused
from salvia.errors import SalviaError
from salvia.iam import Principal, current_principal

if TYPE_CHECKING:
    from salvia.api.access import AccessGuard
    from salvia.api.query_protocol import QueryProtocol
    from salvia.api.runtime import RuntimeProtocol


@dataclass(frozen=True)
class Caller:
    """Who the Studio page being served acts for, and its request (source address, scheme)."""

    principal: Principal
    scope: MutableMapping[str, Any]
    csrf: str


# set by Studio's sign-in gate while it serves a signed-in user's page
signed_in: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "studio_signed_in", default=None
)


def refused(code: str, message: str) -> SalviaError:
    error = SalviaError(message)
    error.code = code
    return error


class StudioApi:
    def __init__(
        self,
        sagemaker: JsonProtocol,
        logs: JsonProtocol,
        metrics: RestJsonProtocol,
        *,
        trail: JsonProtocol | None = None,
        iam: QueryProtocol | None = None,
        runtime: RuntimeProtocol | None = None,
        objects: ASGIApp | None = None,
        guard: AccessGuard | None = None,
    ) -> None:
        self._sagemaker = sagemaker
        self._logs = logs
        self._metrics = metrics
        self._trail = trail
        self._iam = iam
        self._runtime = runtime
        self._objects = objects  # the S3 protocol, for artifacts' downloads
        self.guard = guard  # authenticated mode: every call authorized as the signed-in user

    async def sagemaker(self, operation: str, **params: Any) -> dict[str, Any]:
        return await self._as_user("json", "sagemaker", operation, _present(params),
                                   self._sagemaker.call)  # fmt: skip

    async def logs(self, operation: str, **params: Any) -> dict[str, Any]:
        return await self._as_user("json", "logs", operation, _present(params), self._logs.call)

    async def metrics(self, operation: str, **params: Any) -> dict[str, Any]:
        return await self._as_user("rest", "sagemaker", operation, _present(params),
                                   self._metrics.call)  # fmt: skip

    async def cloudtrail(self, operation: str, **params: Any) -> dict[str, Any]:
        assert self._trail is not None
        return await self._as_user("json", "cloudtrail", operation, _present(params),
                                   self._trail.call)  # fmt: skip

    async def iam(self, operation: str, **params: Any) -> dict[str, Any]:
        assert self._iam is not None
        iam = self._iam

        async def call(name: str, given: dict[str, Any]) -> dict[str, Any]:
            return await iam.call("iam", name, given)

        return await self._as_user("query", "iam", operation, _present(params), call)

    async def invoke(self, request: Request, endpoint: str) -> Response:
        """The runtime's InvokeEndpoint for a page's test-invoke form, as the signed-in user."""
        assert self._runtime is not None
        path = f"/endpoints/{urllib.parse.quote(endpoint, safe='')}/invocations"
        scope = {**request.scope, "path": path, "raw_path": path.encode(), "root_path": ""}
        runtime = self._runtime

        async def call(name: str, given: dict[str, Any]) -> Response:
            return await runtime.handle(Request(scope, request.receive), (endpoint, "invoke"))

        return await self._as_user("runtime", "sagemaker", "InvokeEndpoint", {}, call, scope)

    async def download(self, request: Request, bucket: str, key: str) -> Response:
        """S3 GetObject of an artifact (a model, an output) as the signed-in user."""
        assert self._objects is not None
        path = f"/{bucket}/{key}"
        kept = [(k, v) for k, v in request.scope["headers"] if k in (b"host", b"range")]
        scope = {
            **request.scope,
            "method": "GET",
            "path": path,
            "raw_path": urllib.parse.quote(path).encode(),
            "query_string": b"",
            "root_path": "",
            "headers": kept,
        }
        objects = self._objects

        async def call(name: str, given: dict[str, Any]) -> Response:
            return _Relayed(objects, scope)

        return await self._as_user("s3", "s3", "GetObject", {}, call, scope)

    async def _as_user(
        self,
        kind: str,
        service: str,
        operation: str,
        params: dict[str, Any],
        call: Callable[[str, dict[str, Any]], Awaitable[Any]],
        scope: MutableMapping[str, Any] | None = None,
    ) -> Any:
        if self.guard is None:  # open mode: nothing is checked
            return await call(operation, params)
        caller = signed_in.get()
        if caller is None:
            raise refused("AccessDeniedException", "Sign in to Studio first.")
        given = {**params, "Action": operation} if kind == "query" else params
        try:
            done = self.guard.authorize_in_process(
                scope or caller.scope, caller.principal, kind, service, operation, given
            )
        except SignatureRefused as refusal:
            raise refused(refusal.code, refusal.message) from None
        token = current_principal.set(caller.principal)
        try:
            result = await call(operation, params)
        except SalviaError as error:
            done(error.code)
            raise
        finally:
            current_principal.reset(token)
        done("Success")
        return result

    async def attempt(self, operation: str, **params: Any) -> dict[str, Any] | SalviaError:
        """A call whose failure is shown in its place on the page instead of failing the page."""
        try:
            return await self.sagemaker(operation, **params)
        except SalviaError as error:
            return error

    async def every(
        self, operation: str, result_key: str, *, limit: int = 1000, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """The items of a List* operation over its pages, up to `limit` of them."""
        seen = 0
        token: str | None = None
        while True:
            page = await self.sagemaker(operation, NextToken=token, **params)
            for item in page.get(result_key, []):
                yield item
                seen += 1
                if seen >= limit:
                    return
            token = page.get("NextToken")
            if not token:
                return


class _Relayed(Response):
    """A response that another ASGI app (the S3 protocol) sends for a rewritten request."""

    def __init__(self, app: ASGIApp, scope: MutableMapping[str, Any]) -> None:
        self.app, self.relayed = app, scope
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(self.relayed, receive, send)


def _present(params: dict[str, Any]) -> dict[str, Any]:
    """Members given as None are left out, as a client that does not send them."""
    return {name: value for name, value in params.items() if value is not None}
