"""`sagemaker-runtime` InvokeEndpoint: the gateway from clients to model-server instances.

The body passes through untouched; the variant is chosen by weight (or `TargetVariant`) and the
instance round-robin over pooled keep-alive connections. A container's non-2xx answer becomes
`ModelError` (424) carrying its status and body, as SageMaker reports it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from salvia.api.auth import parse_authorization
from salvia.api.errors import new_request_id
from salvia.config import Settings
from salvia.errors import SalviaError
from salvia.serving.capture import CaptureWriter
from salvia.serving.client import InstanceUnavailable
from salvia.serving.engine import ENDPOINT, EndpointEngine, Route, Variant
from salvia.serving.metrics import InvocationMetrics
from salvia.store.metadata import MetadataStore

log = logging.getLogger(__name__)

MAX_PAYLOAD = 6 * 1024 * 1024  # real-time endpoints take at most 6 MB
TIMEOUT_SECONDS = 60.0
_FORWARDED = (
    "content-type",
    "accept",
    "x-amzn-sagemaker-custom-attributes",
    "x-amzn-sagemaker-inference-id",
)
PREFIX, SUFFIX = "/endpoints/", "/invocations"


def _error(code: str, message: str, status: int, request_id: str, **extra: Any) -> Response:
    body = orjson.dumps({"__type": code, "message": message, **extra})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code},
    )


class RuntimeProtocol:
    def __init__(
        self,
        engine: EndpointEngine,
        store: MetadataStore,
        settings: Settings,
        capture: CaptureWriter | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.settings = settings
        self.metrics = InvocationMetrics()
        self.capture = capture
        self._mirrors: set[asyncio.Task[None]] = set()  # shadow calls in flight

    async def _mirror(
        self,
        route: Route,
        name: str,
        shadow: Variant,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
    ) -> None:
        """A shadow variant's copy of a request: measured and captured, never returned."""
        started = time.perf_counter()
        try:
            reply = await shadow.pick().request(
                "POST", "/invocations", body, headers, TIMEOUT_SECONDS
            )
        except (InstanceUnavailable, TimeoutError):
            self.metrics.record(name, shadow.name, 503, 0.0, time.perf_counter() - started)
            return
        elapsed = time.perf_counter() - started
        self.metrics.record(name, shadow.name, reply.status, elapsed, elapsed)
        if route.capture and self.capture is not None and 200 <= reply.status < 300:
            self.capture.capture(
                route.capture,
                name,
                shadow.name,
                (body, content_type),
                (reply.body, reply.headers.get("content-type", "application/json")),
            )

    @staticmethod
    def endpoint_of(method: str, path: str) -> str | None:
        if method == "POST" and path.startswith(PREFIX) and path.endswith(SUFFIX):
            name = path[len(PREFIX) : -len(SUFFIX)]
            if name and "/" not in name:
                return urllib.parse.unquote(name)
        return None

    async def handle(self, request: Request, name: str) -> Response:
        request_id = new_request_id()
        try:
            parse_authorization(request.headers.get("authorization"))
        except SalviaError as error:
            return _error(error.code, error.message, 400, request_id)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_PAYLOAD:
                return _error(
                    "ValidationError",
                    "Request payload exceeds the 6 MB limit of real-time endpoints.",
                    400,
                    request_id,
                )
            chunks.append(chunk)
        route = self.engine.routes.get(name.lower())
        if route is None:
            record = self.store.get(ENDPOINT, name)
            if record is None:
                return _error(
                    "ValidationError",
                    f"Endpoint {name} of account {self.settings.account_id} not found.",
                    400,
                    request_id,
                )
            status = record.body.get("EndpointStatus")
            return _error(
                "ValidationError",
                f"Endpoint {name} is not in service: it is {status}.",
                400,
                request_id,
            )
        target = request.headers.get("x-amzn-sagemaker-target-variant")
        variant = route.choose(target)
        if variant is None:
            return _error(
                "ValidationError", f"Endpoint {name} has no variant {target}.", 400, request_id
            )
        headers = {h: request.headers[h] for h in _FORWARDED if h in request.headers}
        received = time.perf_counter()
        try:
            reply = await variant.pick().request(
                "POST", "/invocations", b"".join(chunks), headers, TIMEOUT_SECONDS
            )
            answered = time.perf_counter()
        except TimeoutError:
            return _error(
                "ModelError",
                "Your invocation timed out while waiting for a response from the container.",
                424,
                request_id,
            )
        except InstanceUnavailable as error:
            return _error(
                "ServiceUnavailable",
                f"The endpoint's instance is unavailable: {error}",
                503,
                request_id,
            )
        log_stream = (
            f"arn:aws:logs:{self.settings.region}:{self.settings.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{name}"
        )
        self.metrics.record(
            name, variant.name, reply.status, answered - received, time.perf_counter() - received
        )
        if not 200 <= reply.status < 300:
            original = reply.body.decode("utf-8", errors="replace")[:4096]
            return _error(
                "ModelError",
                f"Received client error ({reply.status}) from primary with message "
                f'"{original[:1000]}". See {log_stream} for more information.',
                424,
                request_id,
                OriginalStatusCode=reply.status,
                OriginalMessage=original,
                LogStreamArn=log_stream,
            )
        content_type = reply.headers.get("content-type", "application/json")
        request_type = request.headers.get("content-type", "application/octet-stream")
        for shadow, share in route.shadows:
            if random.random() < share:
                task = asyncio.create_task(
                    self._mirror(route, name, shadow, b"".join(chunks), request_type, headers)
                )
                self._mirrors.add(task)
                task.add_done_callback(self._mirrors.discard)
        if route.capture and self.capture is not None:
            self.capture.capture(
                route.capture,
                name,
                variant.name,
                (b"".join(chunks), request_type),
                (reply.body, content_type),
                request.headers.get("x-amzn-sagemaker-inference-id"),
            )
        out = {"x-amzn-RequestId": request_id, "x-Amzn-Invoked-Production-Variant": variant.name}
        if "x-amzn-sagemaker-custom-attributes" in reply.headers:
            out["X-Amzn-SageMaker-Custom-Attributes"] = reply.headers[
                "x-amzn-sagemaker-custom-attributes"
            ]
        return Response(reply.body, status_code=200, media_type=content_type, headers=out)
