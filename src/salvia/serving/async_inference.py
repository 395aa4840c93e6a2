"""Asynchronous inference: `InvokeEndpointAsync` queues a request and answers at once; a worker
runs it on the endpoint's instances and writes the answer to `<S3OutputPath>/<id>.out` (or the
error to `<S3FailurePath>/<id>-error.out`), then notifies the configured topics.

The queue is the metadata store: one record per request (kind `async-invocation`, parent the
endpoint), `Pending` -> `InProgress` -> `Completed` | `Failed`. Writing the output object is the
commit point: a restarted server finds a request that was `InProgress`, sees whether its output
(or failure) object exists, and finishes the record, or runs the request again when nothing was
written, so no request is lost and none is answered twice.

Per endpoint at most `MaxConcurrentInvocationsPerInstance` x instances requests run at once.
A variant registered with Application Auto Scaling at `MinCapacity` 0 is scaled to zero
instances once its queue has been empty for `Settings.async_scale_in_seconds`, and back to one
when a request arrives. Notifications go to the URLs that `Settings.notification_webhooks` maps
SNS topic ARNs to, as SageMaker's JSON notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from salvia.serving.autoscaler import TARGET, target_key
from salvia.serving.client import InstanceClient, InstanceUnavailable
from salvia.serving.engine import ENDPOINT, ENDPOINT_CONFIG, EndpointEngine
from salvia.store.metadata import ListQuery, Record
from salvia.store.objects import ObjectStoreError

log = logging.getLogger(__name__)

KIND = "async-invocation"
MAX_TTL = 6 * 3600  # RequestTTLSeconds: default and maximum, 6 hours
DEFAULT_TIMEOUT, MAX_TIMEOUT = 900, 3600  # InvocationTimeoutSeconds
MAX_PAYLOAD = 1024**3  # 1 GB
DEFAULT_CONCURRENCY = 4  # MaxConcurrentInvocationsPerInstance when the config leaves it out
# the queue is looked at when a request arrives or finishes (`_wake`), else this often: an idle
# platform should not query its store many times a second
_POLL = 1.0


class AsyncRefused(Exception):
    """The request is refused before it is queued (SageMaker's ValidationError)."""


@dataclass(frozen=True)
class Queued:
    inference_id: str
    output_location: str
    failure_location: str


def async_config(engine: EndpointEngine, endpoint: str) -> dict[str, Any] | None:
    record = engine.ctx.store.get(ENDPOINT, endpoint)
    if record is None:
        return None
    config = engine.ctx.store.get(ENDPOINT_CONFIG, record.body["EndpointConfigName"])
    return (config.body.get("AsyncInferenceConfig") if config else None) or None


class AsyncInference:
    def __init__(self, engine: EndpointEngine) -> None:
        self.engine = engine
        self.ctx = engine.ctx
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running: dict[str, int] = {}  # endpoint name key -> requests in flight
        self._idle_since: dict[str, float] = {}
        self._scaling: set[str] = set()

    # --- the API side ---------------------------------------------------------------------

    def submit(self, endpoint: str, headers: dict[str, str], body: bytes) -> Queued:
        """Queue one request (`headers` lower-cased as received); raises AsyncRefused."""
        record = self.ctx.store.get(ENDPOINT, endpoint)
        if record is None:
            raise AsyncRefused(f"Endpoint {endpoint} of account {self.ctx.settings.account_id} "
                               "not found.")  # fmt: skip
        config = async_config(self.engine, endpoint)
        if config is None:
            raise AsyncRefused(f"Endpoint {endpoint} is not an asynchronous inference endpoint.")
        output = config.get("OutputConfig") or {}
        location = headers.get("x-amzn-sagemaker-inputlocation")
        if bool(location) == bool(body):
            raise AsyncRefused("Give exactly one of InputLocation and an inline Body.")
        ttl = _bounded(headers, "x-amzn-sagemaker-requestttlseconds", 60, MAX_TTL, MAX_TTL)
        timeout = _bounded(headers, "x-amzn-sagemaker-invocationtimeoutseconds", 1, MAX_TIMEOUT,
                           DEFAULT_TIMEOUT)  # fmt: skip
        key = uuid.uuid4().hex
        output_path = output["S3OutputPath"].rstrip("/")
        extension = headers.get("x-amzn-sagemaker-s3outputpathextension", "").strip("/")
        if extension:
            output_path = f"{output_path}/{extension}"
        failure_path = (output.get("S3FailurePath") or output["S3OutputPath"]).rstrip("/")
        filename = headers.get("x-amzn-sagemaker-filename")
        queued = Queued(
            inference_id=headers.get("x-amzn-sagemaker-inference-id") or key,
            output_location=f"{output_path}/{filename or key + '.out'}",
            failure_location=f"{failure_path}/{key}-error.out",
        )
        if body:  # an inline payload is kept beside the outputs until it is answered
            location = f"{output_path}/.salvia-async-input/{key}"
            self.ctx.objects.put_bytes(location, body)
        now = self.ctx.clock.now()
        self.ctx.store.create(
            Record(
                kind=KIND,
                name=key,
                arn=self.ctx.settings.arn("async-invocation", key),
                creation_time=now,
                last_modified_time=now,
                status="Pending",
                parent=record.name_key,
                body={
                    "EndpointName": record.name,
                    "InferenceId": queued.inference_id,
                    "InputLocation": location,
                    "InlineInput": bool(body),
                    "ContentType": headers.get("x-amzn-sagemaker-content-type"),
                    "Accept": headers.get("x-amzn-sagemaker-accept"),
                    "CustomAttributes": headers.get("x-amzn-sagemaker-custom-attributes"),
                    "OutputLocation": queued.output_location,
                    "FailureLocation": queued.failure_location,
                    "ReceivedTime": now,
                    "ExpiresAt": now + ttl,
                    "TimeoutSeconds": timeout,
                },
            )
        )
        self._wake.set()
        return queued

    # --- the worker -----------------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._serve, name="async-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _recover(self) -> None:
        """Requests a previous server left InProgress: finished if their answer was written,
        else queued again."""
        for record in self._records("InProgress"):
            if self._exists(record.body["OutputLocation"]):
                self._finish(record, "Completed")
            elif self._exists(record.body["FailureLocation"]):
                self._finish(record, "Failed")
            else:
                self._set_status(record.name, "Pending")

    def _serve(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        clients: dict[int, InstanceClient] = {}
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self._dispatch(tasks, clients)
            except Exception:
                log.exception("async inference")
            await asyncio.get_running_loop().run_in_executor(None, self._wake.wait, _POLL)
        for task in tasks:
            task.cancel()

    async def _dispatch(self, tasks: set[asyncio.Task[None]], clients: dict[int, Any]) -> None:
        pending = await asyncio.to_thread(self._records, "Pending")
        waiting: dict[str, int] = {}
        for record in pending:
            endpoint = record.body["EndpointName"]
            key = endpoint.lower()
            waiting[key] = waiting.get(key, 0) + 1
            if record.body["ExpiresAt"] < self.ctx.clock.now():
                await asyncio.to_thread(self._expire, record)
                continue
            route = self.engine.routes.get(key)
            variant = route.choose() if route else None
            if variant is None:
                if route is not None:
                    await asyncio.to_thread(self._scale_up, endpoint, route)
                continue
            capacity = len(variant.clients) * self._per_instance(endpoint)
            if self._running.get(key, 0) >= capacity:
                continue
            instance = variant.pick()
            client = clients.setdefault(instance.port, InstanceClient(instance.host, instance.port))
            self._running[key] = self._running.get(key, 0) + 1
            await asyncio.to_thread(self._set_status, record.name, "InProgress")
            task = asyncio.create_task(self._run(record, client, key))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.to_thread(self._scale_in_idle, waiting)

    def _per_instance(self, endpoint: str) -> int:
        config = async_config(self.engine, endpoint) or {}
        client_config = config.get("ClientConfig") or {}
        return int(client_config.get("MaxConcurrentInvocationsPerInstance") or DEFAULT_CONCURRENCY)

    async def _run(self, record: Record, client: InstanceClient, key: str) -> None:
        body = record.body
        try:
            payload = await asyncio.to_thread(self.ctx.objects.read_bytes, body["InputLocation"])
            if len(payload) > MAX_PAYLOAD:
                raise _Failure(f"The input is over the 1 GB limit ({len(payload)} bytes).")
            headers = {k: v for k, v in (("content-type", body.get("ContentType")),
                       ("accept", body.get("Accept")),
                       ("x-amzn-sagemaker-custom-attributes", body.get("CustomAttributes")))
                       if v}  # fmt: skip
            reply = await client.request(
                "POST", "/invocations", payload, headers, float(body["TimeoutSeconds"])
            )
            if not 200 <= reply.status < 300:
                raise _Failure(
                    f"Received server error ({reply.status}) from model with message "
                    f'"{reply.body.decode("utf-8", "replace")[:1000]}".'
                )
            await asyncio.to_thread(
                self.ctx.objects.put_bytes,
                body["OutputLocation"],
                reply.body,
                reply.headers.get("content-type"),
            )
            await asyncio.to_thread(self._finish, record, "Completed", reply)
        except (ObjectStoreError, OSError) as error:
            await self._fail(record, f"The input could not be read: {error}")
        except TimeoutError:
            await self._fail(record, "Inference timed out after InvocationTimeoutSeconds "
                             f"({body['TimeoutSeconds']} s).")  # fmt: skip
        except InstanceUnavailable as error:
            await self._fail(record, f"The endpoint's instance is unavailable: {error}")
        except _Failure as failure:
            await self._fail(record, str(failure))
        finally:
            self._running[key] = max(0, self._running.get(key, 1) - 1)
            self._wake.set()

    async def _fail(self, record: Record, reason: str) -> None:
        await asyncio.to_thread(
            self.ctx.objects.put_bytes, record.body["FailureLocation"], reason.encode()
        )
        await asyncio.to_thread(self._finish, record, "Failed", None, reason)

    def _expire(self, record: Record) -> None:
        reason = "Request expired: RequestTTLSeconds passed before it could be processed."
        self.ctx.objects.put_bytes(record.body["FailureLocation"], reason.encode())
        self._finish(record, "Failed", None, reason)

    # --- records --------------------------------------------------------------------------

    def _records(self, status: str) -> list[Record]:
        query = ListQuery(kind=KIND, status=status, descending=False, limit=1000)
        return self.ctx.store.list_records(query).records

    def _set_status(self, name: str, status: str) -> None:
        def change(record: Record) -> None:
            record.status = status
            record.body["Status"] = status

        self.ctx.store.update(KIND, name, change, self.ctx.clock.now())

    def _finish(self, record: Record, status: str, reply: Any = None, reason: str = "") -> None:
        self._set_status(record.name, status)
        if record.body.get("InlineInput"):
            with contextlib.suppress(ObjectStoreError, OSError):
                self.ctx.objects.delete(record.body["InputLocation"])
        self._notify(record, status, reply, reason)

    def _exists(self, url: str) -> bool:
        try:
            self.ctx.objects.info(url)
            return True
        except (ObjectStoreError, OSError):
            return False

    # --- notifications --------------------------------------------------------------------

    def _notify(self, record: Record, status: str, reply: Any, reason: str) -> None:
        config = async_config(self.engine, record.body["EndpointName"]) or {}
        topics = (config.get("OutputConfig") or {}).get("NotificationConfig") or {}
        topic = topics.get("SuccessTopic" if status == "Completed" else "ErrorTopic")
        url = self.ctx.settings.webhooks().get(topic or "")
        if not url:
            return
        body = record.body
        message: dict[str, Any] = {
            "awsRegion": self.ctx.settings.region,
            "eventTime": _iso(self.ctx.clock.now()),
            "receivedTime": _iso(body["ReceivedTime"]),
            "invocationStatus": status,
            "requestParameters": {
                "contentType": body.get("ContentType") or "application/octet-stream",
                "endpointName": body["EndpointName"],
                "inputLocation": body["InputLocation"],
            },
            "inferenceId": body["InferenceId"],
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if status == "Completed":
            message["responseParameters"] = {
                "contentType": reply.headers.get("content-type", "") if reply else "",
                "sageMakerOutputLocation": body["OutputLocation"],
            }
        else:
            message["failureReason"] = reason
            message["responseParameters"] = {"sageMakerFailureLocation": body["FailureLocation"]}
        request = urllib.request.Request(
            url, data=json.dumps(message).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10):
                pass
        except OSError as error:  # a notification is best effort, as SNS delivery is
            log.warning("notification to %s for %s failed: %s", url, record.name, error)

    # --- scaling to zero and back ---------------------------------------------------------

    def _min_zero_variants(self, endpoint: str) -> list[str]:
        query = ListQuery(kind=TARGET, limit=100)
        found = []
        for target in self.ctx.store.list_records(query).records:
            resource = target.body.get("ResourceId", "")
            prefix = target_key(f"endpoint/{endpoint}/variant/")
            if target_key(resource).startswith(prefix) and target.body.get("MinCapacity") == 0:
                found.append(resource.rsplit("/", 1)[1])
        return found

    def _scale_up(self, endpoint: str, route: Any) -> None:
        if endpoint.lower() in self._scaling:
            return
        variants = [v.name for v in route.variants if not v.clients]
        if not variants:
            return
        self._scaling.add(endpoint.lower())
        log.info("async endpoint %s: scaling up from zero for a queued request", endpoint)
        done = threading.Event()
        self.engine.rescale(
            endpoint,
            [{"VariantName": v, "DesiredInstanceCount": 1} for v in variants],
            on_done=done.set,
        )
        threading.Thread(target=self._scaled, args=(endpoint, done), daemon=True).start()

    def _scaled(self, endpoint: str, done: threading.Event) -> None:
        done.wait(900)
        self._scaling.discard(endpoint.lower())
        self._idle_since.pop(endpoint.lower(), None)
        self._wake.set()

    def _scale_in_idle(self, waiting: dict[str, int]) -> None:
        now = time.monotonic()
        for key, route in list(self.engine.routes.items()):
            if waiting.get(key) or self._running.get(key) or key in self._scaling:
                self._idle_since.pop(key, None)
                continue
            record = self.ctx.store.get(ENDPOINT, key)
            if record is None or async_config(self.engine, record.name) is None:
                continue
            if record.body.get("EndpointStatus") != "InService":
                continue
            zero = [v for v in self._min_zero_variants(record.name)
                    if any(r.name == v and r.clients for r in route.variants)]  # fmt: skip
            if not zero:
                continue
            since = self._idle_since.setdefault(key, now)
            if now - since < self.ctx.settings.async_scale_in_seconds:
                continue
            log.info("async endpoint %s: queue empty, scaling %s to zero", record.name, zero)
            self._idle_since.pop(key, None)
            self.engine.rescale(
                record.name, [{"VariantName": v, "DesiredInstanceCount": 0} for v in zero]
            )


class _Failure(Exception):
    pass


def _bounded(headers: dict[str, str], name: str, low: int, high: int, default: int) -> int:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AsyncRefused(f"{name} must be an integer.") from None
    if not low <= value <= high:
        raise AsyncRefused(f"{name} must be between {low} and {high}, got {value}.")
    return value


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
