"""`sagemaker-runtime` InvokeEndpoint, InvokeEndpointWithResponseStream and
InvokeEndpointAsync: the gateway from clients to model-server instances.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from salvia.api import eventstream
from salvia.api.errors import new_request_id
from salvia.api.sigv4_claims import parse_authorization
from salvia.config import Settings
from salvia.errors import SalviaError
from salvia.serving.async_inference import AsyncInference, AsyncRefused
from salvia.serving.capture import CaptureWriter
from salvia.serving.client import InstanceClient, InstanceUnavailable, PipelineClient, Reply
from salvia.serving.engine import ENDPOINT, DeployFailed, EndpointEngine, Instance, Route, Variant
from salvia.serving.metrics import InvocationMetrics
from salvia.serving.multi_model import ModelNotFound, MultiModelClient
from salvia.serving.serverless import MAX_PAYLOAD as SERVERLESS_PAYLOAD
from salvia.serving.serverless import Serverless
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
PREFIX, SUFFIX, STREAM_SUFFIX = "/endpoints/", "/invocations", "/invocations-response-stream"
ASYNC_SUFFIX = "/async-invocations"
_MODES = ((SUFFIX, "invoke"), (STREAM_SUFFIX, "stream"), (ASYNC_SUFFIX, "async"))


class _Answer(Response):
    """A 200 whose raw headers are built by the caller: the invocation's hot path skips
    Starlette's header assembly (Response's own __call__ sends it as usual)."""

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.body = body
        self.raw_headers = raw_headers
        self.background = None


async def _read_body(request: Request) -> bytes:
    """The request's body, refused past the real-time limit (read from the ASGI messages
    directly: one message for a small body, without Starlette's stream generator)."""
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise _Refused("The client disconnected before sending its whole request.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_PAYLOAD:
            raise _Refused("Request payload exceeds the 6 MB limit of real-time endpoints.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Refused(Exception):
    """An invocation refused before any instance is called: SageMaker's `ValidationError`."""

    def __init__(self, message: str, code: str = "ValidationError", status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


@dataclass
class _Call:
    endpoint: str
    body: bytes
    route: Route
    variant: Variant
    instance: Instance
    target_model: str | None
    headers: dict[str, str]  # what the instance gets, lower-cased


def _error(code: str, message: str, status: int, request_id: str, **extra: Any) -> Response:
    body = orjson.dumps({"__type": code, "message": message, **extra})
    return Response(
        body,
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code},
    )


async def _call(
    instance: Instance, target_model: str | None, body: bytes, headers: dict[str, str]
) -> Reply:
    """One instance's answer to an invocation (of `target_model` on a multi-model instance)."""
    if isinstance(instance, MultiModelClient) and target_model is not None:
        return await instance.invoke(target_model, body, headers, TIMEOUT_SECONDS)
    return await instance.request("POST", "/invocations", body, headers, TIMEOUT_SECONDS)


class RuntimeProtocol:
    def __init__(
        self,
        engine: EndpointEngine,
        store: MetadataStore,
        settings: Settings,
        capture: CaptureWriter | None = None,
        asynchronous: AsyncInference | None = None,
        serverless: Serverless | None = None,
    ) -> None:
        self.asynchronous = asynchronous
        self.serverless = serverless
        self.engine = engine
        self.store = store
        self.settings = settings
        self.metrics: InvocationMetrics = engine.metrics
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
        target_model: str | None,
    ) -> None:
        """A shadow variant's copy of a request: measured and captured, never returned."""
        started = time.perf_counter()
        try:
            instance = shadow.pick_for(target_model) if target_model else shadow.pick()
            reply = await _call(instance, target_model, body, headers)
        except (InstanceUnavailable, TimeoutError, ModelNotFound):
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
    def endpoint_of(method: str, path: str) -> tuple[str, str] | None:
        """(endpoint name, `invoke` | `stream` | `async`) of a runtime invocation path."""
        if method != "POST" or not path.startswith(PREFIX):
            return None
        for suffix, mode in (
            (SUFFIX, "invoke"),
            (STREAM_SUFFIX, "stream"),
            (ASYNC_SUFFIX, "async"),
        ):
            if path.endswith(suffix):
                name = path[len(PREFIX) : -len(suffix)]
                if name and "/" not in name:
                    return urllib.parse.unquote(name), mode
        return None

    async def handle(self, request: Request, target: tuple[str, str]) -> Response:
        name, mode = target
        streaming = mode == "stream"
        request_id = new_request_id()
        if mode == "async":
            return await self._queue(request, name, request_id)
        # one dict for the dozen look-ups below (Starlette's Headers scans the list per look-up)
        fields = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        try:
            call = await self._prepare(request, fields, name, streaming)
        except _Refused as refusal:
            return _error(refusal.code, refusal.message, refusal.status, request_id)
        try:
            if streaming:
                return await self._stream(call, request_id)
            return await self._invoke(call, fields, request_id)
        finally:
            if call.variant.serverless is not None:
                call.variant.in_flight -= 1
                call.variant.last_used = time.monotonic()

    async def _prepare(
        self, request: Request, fields: dict[str, str], name: str, streaming: bool
    ) -> _Call:
        """Everything both invocations check before calling an instance."""
        try:
            parse_authorization(fields.get("authorization"))
        except SalviaError as error:
            raise _Refused(error.message, error.code) from None
        body = await _read_body(request)
        size = len(body)
        route = self.engine.routes.get(name.lower())
        if route is None:
            record = self.store.get(ENDPOINT, name)
            if record is None:
                raise _Refused(f"Endpoint {name} of account {self.settings.account_id} not found.")
            status = record.body.get("EndpointStatus")
            raise _Refused(f"Endpoint {name} is not in service: it is {status}.")
        target = fields.get("x-amzn-sagemaker-target-variant")
        variant = route.choose(target)
        if variant is None:
            raise _Refused(f"Endpoint {name} has no variant {target}.")
        if variant.serverless is not None:
            await self._serverless_admit(name, variant, size)
        target_model = fields.get("x-amzn-sagemaker-target-model")
        instance = variant.pick_for(target_model) if target_model else variant.pick()
        if isinstance(instance, MultiModelClient) != (target_model is not None):
            raise _Refused(
                f"Endpoint {name} is a multi-model endpoint: TargetModel is required."
                if target_model is None
                else f"Endpoint {name} is not a multi-model endpoint and does not support "
                "the TargetModel header."
            )
        hostname = fields.get("x-amzn-sagemaker-target-container-hostname")
        if isinstance(instance, PipelineClient) and instance.direct:
            stage = instance.container(hostname) if hostname else None
            if stage is None:
                raise _Refused(
                    f"Endpoint {name} invokes its containers directly: TargetContainerHostname "
                    f"must name one of {', '.join(map(str, instance.hostnames))}."
                )
            instance = stage
        elif hostname is not None:
            raise _Refused(
                "TargetContainerHostname is only valid for an endpoint whose model has "
                "InferenceExecutionConfig Mode Direct."
            )
        headers = {h: fields[h] for h in _FORWARDED if h in fields}
        if streaming:  # the streaming operation names its Accept header differently
            headers.pop("accept", None)
            if "x-amzn-sagemaker-accept" in fields:
                headers["accept"] = fields["x-amzn-sagemaker-accept"]
        return _Call(name, body, route, variant, instance, target_model, headers)

    async def _serverless_admit(self, name: str, variant: Variant, size: int) -> None:
        """Serverless limits, then an instance: throttled over MaxConcurrency, started on
        demand when there is none (the request waits for its cold start)."""
        assert variant.serverless is not None
        if size > SERVERLESS_PAYLOAD:
            raise _Refused("Request payload exceeds the 4 MB limit of serverless endpoints.")
        limit = int(variant.serverless.get("MaxConcurrency", 1))
        if variant.in_flight >= limit:
            raise _Refused(
                f"Endpoint {name} is at its MaxConcurrency of {limit} concurrent invocations.",
                "ThrottlingException",
                429,
            )
        variant.in_flight += 1
        if variant.clients or self.serverless is None:
            return
        try:
            await asyncio.to_thread(self.serverless.cold_start, name, variant)
        except DeployFailed as failure:
            variant.in_flight -= 1
            raise _Refused(f"The serverless instance did not start: {failure}",
                           "ServiceUnavailable", 503) from None  # fmt: skip
        except Exception as error:  # a fault of ours: still an answer in SageMaker's shape
            variant.in_flight -= 1
            log.exception("cold start of serverless endpoint %s", name)
            raise _Refused(
                f"The serverless instance did not start: InternalFailure: "
                f"{type(error).__name__}: {error}",
                "ServiceUnavailable",
                503,
            ) from None

    async def _invoke(self, call: _Call, fields: dict[str, str], request_id: str) -> Response:
        name, route, variant, instance = call.endpoint, call.route, call.variant, call.instance
        target_model, headers, body = call.target_model, call.headers, call.body
        received = time.perf_counter()
        try:
            reply = await _call(instance, target_model, body, headers)
            answered = time.perf_counter()
        except ModelNotFound as error:
            return _error("ValidationError", str(error), 400, request_id)
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
        self.metrics.record(
            name, variant.name, reply.status, answered - received, time.perf_counter() - received
        )
        if not 200 <= reply.status < 300:
            return self._model_error(name, reply, request_id)
        content_type = reply.headers.get("content-type", "application/json")
        request_type = fields.get("content-type", "application/octet-stream")
        for shadow, share in route.shadows:
            if random.random() < share:
                task = asyncio.create_task(
                    self._mirror(route, name, shadow, body, request_type, headers, target_model)
                )
                self._mirrors.add(task)
                task.add_done_callback(self._mirrors.discard)
        if route.capture and self.capture is not None:
            self.capture.capture(
                route.capture,
                name,
                variant.name,
                (body, request_type),
                (reply.body, content_type),
                fields.get("x-amzn-sagemaker-inference-id"),
            )
        out = [
            (b"content-length", b"%d" % len(reply.body)),
            (b"content-type", content_type.encode("latin-1")),
            (b"x-amzn-requestid", request_id.encode("latin-1")),
            (b"x-amzn-invoked-production-variant", variant.name.encode("latin-1")),
        ]
        if "x-amzn-sagemaker-custom-attributes" in reply.headers:
            attributes = reply.headers["x-amzn-sagemaker-custom-attributes"]
            out.append((b"x-amzn-sagemaker-custom-attributes", attributes.encode("latin-1")))
        return _Answer(reply.body, out)

    async def _queue(self, request: Request, name: str, request_id: str) -> Response:
        """InvokeEndpointAsync: queued durably, answered at once with where the answer will be."""
        if self.asynchronous is None:
            return _error("ValidationError", "Asynchronous inference is off.", 400, request_id)
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
                    "An inline asynchronous payload is limited to 6 MB; larger inputs go in "
                    "InputLocation (up to 1 GB).",
                    400,
                    request_id,
                )
            chunks.append(chunk)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            queued = await asyncio.to_thread(
                self.asynchronous.submit, name, headers, b"".join(chunks)
            )
        except AsyncRefused as refusal:
            return _error("ValidationError", str(refusal), 400, request_id)
        return Response(
            orjson.dumps({"InferenceId": queued.inference_id}),
            status_code=202,
            media_type="application/json",
            headers={
                "x-amzn-RequestId": request_id,
                "X-Amzn-SageMaker-OutputLocation": queued.output_location,
                "X-Amzn-SageMaker-FailureLocation": queued.failure_location,
            },
        )

    def _log_stream(self, name: str) -> str:
        return (
            f"arn:aws:logs:{self.settings.region}:{self.settings.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{name}"
        )

    def _model_error(self, name: str, reply: Reply, request_id: str) -> Response:
        log_stream = self._log_stream(name)
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

    async def _stream(self, call: _Call, request_id: str) -> Response:
        """InvokeEndpointWithResponseStream: each chunk the container sends becomes a
        `PayloadPart` event as it arrives; a container that breaks off midway ends the stream
        with a `ModelStreamError` event."""
        if not isinstance(call.instance, InstanceClient):
            kind = "multi-model" if call.target_model else "inference-pipeline"
            return _error(
                "ValidationError",
                f"Endpoint {call.endpoint} is a {kind} endpoint, which does not stream responses.",
                400,
                request_id,
            )
        received = time.perf_counter()
        try:
            opened = await call.instance.open_stream(
                "POST", "/invocations", call.body, call.headers, TIMEOUT_SECONDS
            )
        except TimeoutError:
            return _error(
                "ModelError",
                "Your invocation timed out while waiting for a response from the container.",
                424,
                request_id,
            )
        except InstanceUnavailable as error:
            message = f"The endpoint's instance is unavailable: {error}"
            return _error("ServiceUnavailable", message, 503, request_id)
        if not 200 <= opened.status < 300:
            reply = Reply(opened.status, opened.headers, await opened.read_all())
            self.metrics.record(call.endpoint, call.variant.name, reply.status, 0.0, 0.0)
            return self._model_error(call.endpoint, reply, request_id)

        async def events() -> AsyncIterator[bytes]:
            status = 200
            try:
                async for part in opened.parts(TIMEOUT_SECONDS):
                    yield eventstream.payload_part(part)
            except TimeoutError:
                status = 504
                yield eventstream.model_stream_error(
                    "ModelInvocationTimeExceeded",
                    "The model did not send the rest of its response in time.",
                )
            except (InstanceUnavailable, OSError, ValueError, asyncio.IncompleteReadError):
                status = 500
                yield eventstream.model_stream_error(
                    "StreamBroken",
                    "The connection to the model broke before its response ended. See "
                    f"{self._log_stream(call.endpoint)} for more information.",
                )
            finally:
                elapsed = time.perf_counter() - received
                self.metrics.record(call.endpoint, call.variant.name, status, elapsed, elapsed)

        headers = {
            "x-amzn-RequestId": request_id,
            "x-Amzn-Invoked-Production-Variant": call.variant.name,
            "X-Amzn-SageMaker-Content-Type": opened.headers.get(
                "content-type", "application/octet-stream"
            ),
        }
        if "x-amzn-sagemaker-custom-attributes" in opened.headers:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = opened.headers[
                "x-amzn-sagemaker-custom-attributes"
            ]
        return StreamingResponse(events(), media_type=eventstream.CONTENT_TYPE, headers=headers)
