"""One address for every protocol, routed by the shape of each request (as SageMaker's clients
all sign as `sagemaker`, the service cannot be read off the signature):

- `X-Amz-Target: SageMaker.*`              -> the control plane (AWS JSON 1.1)
- `GET /healthz`                           -> readiness
- an unsigned request under `/studio`      -> Studio, the web console (signed, it is S3's)
- a method + path of a REST-JSON model     -> that service (sagemaker-metrics, ...)
- anything else                            -> the S3 protocol over the object store
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from salvia.api.errors import error_response, new_request_id
from salvia.api.json_protocol import JsonProtocol
from salvia.api.query_protocol import QueryProtocol
from salvia.api.rest_protocol import RestJsonProtocol
from salvia.api.runtime import RuntimeProtocol
from salvia.errors import UnknownOperationException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]
Guard = Callable[[Scope, Receive, Send, ASGIApp, "Router"], Awaitable[None]]
STUDIO_PREFIX = "/studio"


def _is_aws_json(scope: Scope) -> bool:
    """A body declared as AWS JSON can only be meant for a JSON-protocol service, never S3."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.startswith(b"application/x-amz-json")
    return False


def _is_form(scope: Scope) -> bool:
    """IAM's and STS's query protocol posts a form; S3 never posts one to `/`."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.startswith(b"application/x-www-form-urlencoded")
    return False


def _is_studio(scope: Scope) -> bool:
    """Browsers do not sign: a signed request under /studio is S3's, for a bucket of that name."""
    path = scope["path"]
    if path != STUDIO_PREFIX and not path.startswith(STUDIO_PREFIX + "/"):
        return False
    if b"X-Amz-Signature=" in scope.get("query_string", b""):
        return False  # a presigned S3 URL
    return not any(name in (b"authorization", b"x-amz-target") for name, _ in scope["headers"])


class Router:
    def __init__(
        self,
        *,
        json_services: Sequence[JsonProtocol],
        rest_services: Sequence[RestJsonProtocol],
        fallback: ASGIApp | None,
        runtime: RuntimeProtocol | None = None,
        studio: ASGIApp | None = None,
        guard: Guard | None = None,
        on_startup: Sequence[Hook] = (),
        on_shutdown: Sequence[Hook] = (),
    ) -> None:
        self.json_services = {service.prefix: service for service in json_services}
        self.rest_services = list(rest_services)
        self.fallback = fallback
        self.runtime = runtime
        self.studio = studio
        self.guard = guard  # authenticates and authorizes every request (authenticated mode)
        self.query: QueryProtocol | None = None  # IAM and STS, added with access control
        self.on_startup = list(on_startup)
        self.on_shutdown = list(on_shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.guard is not None:
            await self.guard(scope, receive, send, self._serve, self)
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.studio is not None and _is_studio(scope):
            await self.studio(scope, receive, send)
            return
        response = await self._route(scope, receive)
        if response is None:
            assert self.fallback is not None
            await self.fallback(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive) -> Response | None:
        target = None
        for name, value in scope["headers"]:
            if name == b"x-amz-target":
                target = value.decode("latin-1")
                break
        if target is not None:
            service = self.json_services.get(target.rpartition(".")[0])
            if service is None:
                error = UnknownOperationException(f"Operation {target[:200]} is not recognized.")
                return error_response(error, new_request_id())
            return await service.handle(Request(scope, receive), target)
        method, path = scope["method"], scope["path"]
        if self.query is not None and method == "POST" and path == "/" and _is_form(scope):
            return await self.query.handle(Request(scope, receive))
        if method == "POST" and path == "/" and _is_aws_json(scope):
            error = UnknownOperationException("The X-Amz-Target header is missing.")
            return error_response(error, new_request_id())
        if path == "/healthz" and method in {"GET", "HEAD"}:
            return JSONResponse({"status": "ok"})
        # Prometheus scrapes without signing; a signed GET /metrics is S3 listing a bucket
        if (
            path == "/metrics"
            and method == "GET"
            and self.runtime is not None
            and not any(name == b"authorization" for name, _ in scope["headers"])
        ):
            return PlainTextResponse(
                self.runtime.metrics.prometheus(), media_type="text/plain; version=0.0.4"
            )
        if self.runtime is not None:
            endpoint = self.runtime.endpoint_of(method, path)
            if endpoint is not None:
                return await self.runtime.handle(Request(scope, receive), endpoint)
        for rest in self.rest_services:
            found = rest.match(method, path)
            if found is not None:
                return await rest.handle(Request(scope, receive), *found)
        if self.fallback is None:
            error = UnknownOperationException(f"No operation answers {method} {path[:200]}.")
            return error_response(error, new_request_id())
        return None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    for hook in self.on_startup:
                        await hook()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for hook in self.on_shutdown:
                    await hook()
                await send({"type": "lifespan.shutdown.complete"})
                return
