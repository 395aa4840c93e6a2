"""Batch transform jobs: a model's instances started for the job, every input object cut into
requests, the answers written to `<S3OutputPath>/<relative key>.out` in the input's order.

A job runs in a thread of its own: it starts `InstanceCount` model-server instances (the same
model servers endpoints use, told `SAGEMAKER_BATCH=true`), gives each instance every
`InstanceCount`-th object, keeps up to `MaxConcurrentTransforms` requests in flight per instance,
and writes an object's output only once all of it is done (a partial output is never uploaded).
Settings come from the request, then the container's `/execution-parameters`, then defaults.
A request the model answers with an error fails the job with the record's position; connection
failures and timeouts are retried `ModelClientConfig.InvocationsMaxRetries` times. A server
restart runs unfinished jobs again, skipping objects whose output is already written.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import logging
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salvia import logfile
from salvia.compute.channels import ChannelError, source_objects
from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.serving import batch_records as records
from salvia.serving.batch_records import Batch, Processing, RecordError
from salvia.serving.client import InstanceClient, InstanceUnavailable
from salvia.serving.engine import DeployFailed, EndpointEngine
from salvia.store.metadata import ListQuery, Record
from salvia.store.objects import ObjectReader, ObjectStoreError
from salvia.store.streams import PartsStream

log = logging.getLogger(__name__)

KIND = "transform-job"
LOG_GROUP = "/aws/sagemaker/TransformJobs"
_MB = 1024 * 1024


class TransformFailed(Exception):
    pass


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    """The job's request with every default resolved."""

    split: str
    strategy: str
    max_payload: int  # bytes; 0: no limit
    concurrency: int
    content_type: str | None
    accept: str | None
    by_line: bool
    gzip: bool
    processing: Processing
    timeout: float
    retries: int

    @property
    def csv_input(self) -> bool:
        return records.is_csv(self.content_type)


class TransformEngine:
    def __init__(self, endpoints: EndpointEngine) -> None:
        self.endpoints = endpoints
        self.ctx = endpoints.ctx
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def submit(self, name: str) -> None:
        with self._lock:
            stop = self._stops.setdefault(name, threading.Event())
        threading.Thread(
            target=self._run, args=(name, stop), name=f"transform-{name}", daemon=True
        ).start()

    def stop(self, name: str) -> None:
        with self._lock:
            event = self._stops.get(name)
        if event is not None:
            event.set()

    def recover(self) -> None:
        """Jobs cut off by a restart run again (finished objects are skipped); Stopping ones
        stop."""
        for status in ("InProgress", "Stopping"):
            page = self.ctx.store.list_records(ListQuery(kind=KIND, status=status, limit=1000))
            for record in page.records:
                if status == "Stopping":
                    self._finish(record.name, "Stopped")
                else:
                    self.submit(record.name)

    def _run(self, name: str, stop: threading.Event) -> None:
        record = self.ctx.store.get(KIND, name)
        if record is None:
            return
        root = self.ctx.settings.home / "transform" / name
        instances: list[dict[str, Any]] = []
        logs = _LogMirrors(self.ctx.settings.home / "logs", record, instances)
        status, reason = "Completed", ""
        try:
            log.info("transform job %s: starting", name)
            logs.start()
            self._transform(record, root, instances, stop)
            if stop.is_set():
                status = "Stopped"
        except _Stopped:
            status = "Stopped"
        except (TransformFailed, DeployFailed, RecordError, ChannelError) as failure:
            status, reason = "Failed", str(failure)
        except Exception as error:  # a bug must still end the job, with its reason
            log.exception("transform job %s", name)
            status, reason = "Failed", f"InternalServerError: {error}"
        finally:
            logs.finish()  # the whole log is in place before the job is seen to end
            self._finish(name, status, reason)
            for instance in instances:
                self.endpoints.stop_instance(instance, grace_seconds=10)
            shutil.rmtree(root, ignore_errors=True)
            with self._lock:
                self._stops.pop(name, None)

    def _mark_started(self, name: str) -> None:
        def change(record: Record) -> None:
            record.body.setdefault("TransformStartTime", self.ctx.clock.now())

        self.ctx.store.update(KIND, name, change, self.ctx.clock.now())

    def _finish(self, name: str, status: str, reason: str = "") -> None:
        now = self.ctx.clock.now()

        def change(record: Record) -> None:
            if record.body.get("TransformJobStatus") in {"Completed", "Failed", "Stopped"}:
                return
            record.body["TransformJobStatus"] = status
            record.status = status
            record.body["TransformEndTime"] = now
            record.body.setdefault("TransformStartTime", now)
            if reason:
                record.body["FailureReason"] = reason[:1024]

        self.ctx.store.update(KIND, name, change, now)

    # --- the work -------------------------------------------------------------------------

    def _transform(
        self, record: Record, root: Path, instances: list[dict[str, Any]], stop: threading.Event
    ) -> None:
        body = record.body
        source = body["TransformInput"]["DataSource"]["S3DataSource"]
        items = source_objects(self.ctx.objects, "TransformInput", source)
        if not items:
            raise TransformFailed(f"No input objects found under {source['S3Uri']}.")
        output_path = body["TransformOutput"]["S3OutputPath"].rstrip("/")
        done = set(body.get("_DoneObjects") or [])
        todo = [item for item in items if item.url not in done]
        resources = body["TransformResources"]
        instance_type = lookup_instance_type(resources.get("InstanceType", "local"))
        count = min(resources.get("InstanceCount", 1), max(len(todo), 1))
        containers = self.endpoints.prepare_model(
            body["ModelName"], root, environment=_container_environment(body, instance_type)
        )
        clients: list[InstanceClient] = []
        for index in range(count):
            client, instance = self.endpoints.start_instance(
                record.name, f"algo-{index + 1}", root / f"instance-{index}", containers,
                instance_type,
            )  # fmt: skip
            instances.append(instance)
            if not isinstance(client, InstanceClient):
                raise TransformFailed(
                    "Batch transform serves single-container models; this model is an "
                    "inference pipeline or a multi-model container."
                )
            clients.append(client)
        for instance in instances:
            self.endpoints.wait_healthy(instance, 600)
        plan = _plan(body, _execution_parameters(clients[0]))
        self._mark_started(record.name)  # SageMaker's TransformStartTime: running on instances
        log.info("transform job %s: %d instance(s) healthy; %d object(s) to do", record.name,
                 len(instances), len(todo))  # fmt: skip
        asyncio.run(self._process(record.name, todo, clients, plan, output_path, stop))
        log.info("transform job %s: all objects written", record.name)

    async def _process(
        self,
        name: str,
        items: list[Any],
        clients: list[InstanceClient],
        plan: Plan,
        output_path: str,
        stop: threading.Event,
    ) -> None:
        async def serve(client: InstanceClient, mine: list[Any]) -> None:
            for item in mine:
                if stop.is_set():
                    raise _Stopped()
                await self._object(client, item, plan, stop, f"{output_path}/{item.relative}.out")
                await asyncio.to_thread(self._record_done, name, item.url)

        try:
            async with asyncio.TaskGroup() as group:  # one failing instance stops the others
                for index, client in enumerate(clients):
                    group.create_task(serve(client, items[index :: len(clients)]))
        except BaseExceptionGroup as failures:
            raise failures.exceptions[0] from None
        finally:
            for client in clients:
                client.close()

    def _record_done(self, name: str, url: str) -> None:
        def change(record: Record) -> None:
            record.body.setdefault("_DoneObjects", []).append(url)

        self.ctx.store.update(KIND, name, change, self.ctx.clock.now())

    async def _object(
        self, client: InstanceClient, item: Any, plan: Plan, stop: threading.Event, output: str
    ) -> None:
        """One input object, read, cut and sent a payload at a time, up to
        `MaxConcurrentTransforms` in flight; its output is written in order as the answers
        arrive and stored only once all of it is there (a failed job leaves no partial
        output)."""
        try:
            reader = await asyncio.to_thread(self.ctx.objects.open, item.url)
        except ObjectStoreError as error:  # gone since it was listed
            raise TransformFailed(f"ClientError: Cannot read {item.url}: {error}") from None
        sink = PartsStream()
        stored = asyncio.ensure_future(asyncio.to_thread(self.ctx.objects.put_stream, output, sink))
        work = _batches(reader, plan)
        # payloads cut ahead, so that a lane whose answer came sends its next at once
        ready: asyncio.Queue[tuple[int, Batch] | None] = asyncio.Queue(maxsize=plan.concurrency)
        answers: dict[int, bytes] = {}
        written = 0

        async def cut() -> None:
            for index in itertools.count():
                try:
                    batch = await asyncio.to_thread(next, work, None)
                except RecordError as error:
                    raise TransformFailed(f"{item.url}: {error}") from None
                await ready.put(None if batch is None else (index, batch))
                if batch is None:
                    return

        async def lane() -> None:
            nonlocal written
            while (taken := await ready.get()) is not None:
                if stop.is_set():
                    raise _Stopped()
                if stored.done():  # the store gave up before the end: the rest is no use
                    await _written(stored, output)
                index, batch = taken
                answers[index] = await self._answer(client, batch, plan, item.url)
                while written in answers:  # the answers so far, in the input's order
                    for piece in records.assembled(answers.pop(written), plan.by_line):
                        sink.write(piece)
                    written += 1
            await ready.put(None)  # for the next lane

        try:
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(cut())
                    for _ in range(plan.concurrency):
                        group.create_task(lane())
            except BaseExceptionGroup as failures:
                raise failures.exceptions[0] from None
            sink.end()
            await _written(stored, output)
        except BaseException as error:
            sink.fail(error)
            await asyncio.gather(stored, return_exceptions=True)
            raise
        finally:
            await asyncio.to_thread(reader.close)

    async def _answer(self, client: InstanceClient, batch: Batch, plan: Plan, url: str) -> bytes:
        status, response_type, answer = await self._send(client, batch.payload, plan)
        if not 200 <= status < 300:
            position = await self._failing_record(client, batch, plan)
            raise TransformFailed(
                f"ClientError: {url}, record {position}: the model answered {status}: "
                f"{answer.decode('utf-8', 'replace')[:600]}"
            )
        if not plan.processing.active:
            return answer
        inputs = batch.records
        try:
            outputs = records.split_output(answer, response_type, len(inputs))
            joined = [
                records.join_output(
                    source, output, plan.processing, plan.csv_input,
                    records.is_csv(response_type),
                )
                for source, output in zip(batch.sources or inputs, outputs, strict=True)
            ]  # fmt: skip
        except RecordError as error:
            raise TransformFailed(f"{url}, records from {batch.first + 1}: {error}") from None
        return b"\n".join(joined) + b"\n"

    async def _send(
        self, client: InstanceClient, payload: bytes, plan: Plan
    ) -> tuple[int, str, bytes]:
        headers = {}
        if plan.content_type:
            headers["content-type"] = plan.content_type
        if plan.accept:
            headers["accept"] = plan.accept
        for attempt in range(plan.retries + 1):
            try:
                reply = await client.request("POST", "/invocations", payload, headers, plan.timeout)
                return reply.status, reply.headers.get("content-type", ""), reply.body
            except (InstanceUnavailable, TimeoutError) as error:
                if attempt == plan.retries:
                    raise TransformFailed(
                        f"The model did not answer after {plan.retries + 1} attempts: "
                        f"{type(error).__name__}: {error}"
                    ) from None
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    async def _failing_record(self, client: InstanceClient, batch: Batch, plan: Plan) -> int:
        """The 1-based position of the record that fails, found by halving the batch."""
        parts = batch.records or records.split_records(batch.payload, plan.split)
        first = batch.first
        separator = b"\n" if plan.split == "Line" else b""
        while len(parts) > 1:
            half = parts[: len(parts) // 2]
            status, _, _ = await self._send(client, separator.join(half) + separator, plan)
            if 200 <= status < 300:
                first += len(half)
                parts = parts[len(half) :]
            else:
                parts = half
        return first + 1


async def _written(stored: asyncio.Future[Any], output: str) -> None:
    """The output's store write, its failure (no bucket, say) as the job's reason."""
    try:
        await stored
    except ObjectStoreError as error:
        raise TransformFailed(f"ClientError: Cannot write {output}: {error}") from None


class _LogMirrors:
    """The model servers' output of a job's instances, copied into CloudWatch Logs
    (`/aws/sagemaker/TransformJobs/<job>/algo-<n>-<created>`) twice a second while the job
    runs, and to the last line when it ends. `instances` is the job's list, which grows as its
    instances start."""

    def __init__(self, logs_root: Path, record: Record, instances: list[dict[str, Any]]) -> None:
        self.logs_root = logs_root
        self.prefix = f"{record.name}/"
        self.created = int(record.creation_time)
        self.instances = instances
        self.mirrors: dict[str, logfile.Mirror] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(
            target=self._follow, name=f"transform-logs-{record.name}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
        self._copy(final=True)

    def _follow(self) -> None:
        while not self.done.wait(0.5):
            self._copy(final=False)

    def _copy(self, final: bool) -> None:
        for index, instance in enumerate(list(self.instances)):
            source = instance.get("Log")
            if not source:
                continue
            mirror = self.mirrors.get(source)
            if mirror is None:
                stream = f"{self.prefix}algo-{index + 1}-{self.created}"
                path = logfile.stream_path(self.logs_root, LOG_GROUP, stream)
                mirror = self.mirrors[source] = logfile.Mirror(Path(source), path)
            mirror.copy(final)


def _batches(reader: ObjectReader, plan: Plan) -> Iterator[Batch]:
    """The object's requests, cut as they are asked for (reads block: call on a thread)."""
    read = gzip.GzipFile(fileobj=reader).read if plan.gzip else reader.read  # type: ignore[call-overload]
    if not plan.processing.active and plan.split == "Line" and plan.strategy == "MultiRecord":
        size = 0 if plan.gzip else reader.length  # (a gzipped object's size is unknown)
        target = records.even_payloads(size, plan.max_payload, plan.concurrency)
        yield from records.read_line_chunks(read, plan.max_payload, target)
        return
    data = read(-1)
    separator = b"\n" if plan.split == "Line" else b""
    if not plan.processing.active:
        for batch in records.batches(
            records.split_records(data, plan.split), plan.strategy, plan.max_payload, separator
        ):
            yield Batch(batch.payload, batch.first, [])
        return
    raw = records.split_records(data, plan.split)
    filtered = [records.filter_input(r, plan.processing, plan.csv_input) for r in raw]
    for batch in records.batches(filtered, plan.strategy, plan.max_payload, separator):
        sources = raw[batch.first : batch.first + len(batch.records)]
        yield Batch(batch.payload, batch.first, batch.records, sources)


def _container_environment(body: dict[str, Any], instance_type: Any) -> dict[str, str]:
    """What SageMaker tells a batch container, over the job's own `Environment`."""
    env = dict(body.get("Environment") or {})
    env["SAGEMAKER_BATCH"] = "true"
    if body.get("MaxPayloadInMB") is not None:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(body["MaxPayloadInMB"])
    if body.get("BatchStrategy"):
        env["SAGEMAKER_BATCH_STRATEGY"] = (
            "MULTI_RECORD" if body["BatchStrategy"] == "MultiRecord" else "SINGLE_RECORD"
        )
    concurrency = body.get("MaxConcurrentTransforms") or 0
    if concurrency:
        env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(concurrency)
    # a server process per concurrent request, up to the instance's vCPUs, unless set
    vcpus = instance_type.vcpus_on_host or 1
    workers = min(concurrency, vcpus) if concurrency else vcpus
    env.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", str(max(workers, 1)))
    # the instance's vCPUs shared among its workers: more threads than cores makes OpenMP's
    # spinning threads fight each other
    threads = str(max(1, vcpus // max(1, int(env["SAGEMAKER_MODEL_SERVER_WORKERS"]))))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(variable, threads)
    return env


def _execution_parameters(client: InstanceClient) -> dict[str, Any]:
    url = f"http://{client.host}:{client.port}/execution-parameters"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            parameters = json.loads(response.read())
            return parameters if isinstance(parameters, dict) else {}
    except (OSError, ValueError):
        return {}


def _plan(body: dict[str, Any], parameters: dict[str, Any]) -> Plan:
    """Request value, then the container's execution parameters, then SageMaker's default."""
    transform_input = body["TransformInput"]
    split = transform_input.get("SplitType") or "None"
    strategy = body.get("BatchStrategy") or {
        "MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord"
    }.get(str(parameters.get("BatchStrategy", "")).upper(), "MultiRecord")  # fmt: skip
    if split == "None":
        strategy = "SingleRecord"  # the whole object is the one record
    payload_mb = body.get("MaxPayloadInMB")
    if payload_mb is None:
        payload_mb = parameters.get("MaxPayloadInMB", 6)
    concurrency = body.get("MaxConcurrentTransforms") or parameters.get("MaxConcurrentTransforms")
    client_config = body.get("ModelClientConfig") or {}
    output = body["TransformOutput"]
    return Plan(
        split=split,
        strategy=strategy,
        max_payload=int(float(payload_mb) * _MB),
        concurrency=max(1, int(concurrency or 1)),
        content_type=transform_input.get("ContentType"),
        accept=output.get("Accept"),
        by_line=output.get("AssembleWith") == "Line",
        gzip=transform_input.get("CompressionType") == "Gzip",
        processing=Processing.of(body.get("DataProcessing")),
        timeout=float(client_config.get("InvocationsTimeoutInSeconds", 600)),
        retries=int(client_config.get("InvocationsMaxRetries", 3)),
    )
