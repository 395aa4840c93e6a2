"""Processing jobs: the container command (`AppSpecification`) on `InstanceCount` instances,
inputs staged to the literal `/opt/ml/processing/...` paths the request names, outputs uploaded
to S3 at the end (or continuously), SageMaker's `/opt/ml/config/processingjobconfig.json` and
`resourceconfig.json` beside them.

Each instance's root is bound at `/opt/ml` in a private mount namespace (the training jobs'
executor isolation), so a script's hardcoded `LocalPath`s work unchanged; arguments that name
`/opt/ml/...` are given as the root's host path, valid with or without the mount. A leading
`python`/`python3` in the entrypoint is the runtime's interpreter. A job runs in a
thread; a restarted server re-attaches to instances that still run.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salvia import logfile
from salvia.compute import channels
from salvia.compute.executor import InstanceSpec, InstanceStatus, IsolationUnavailable, State
from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.store.metadata import ListQuery, Record
from salvia.training.engine import EngineContext
from salvia.training.instances import base_environment

log = logging.getLogger(__name__)

KIND = "processing-job"
OPT_ML = "/opt/ml/"
POLL_SECONDS = 0.1
CONTINUOUS_SECONDS = 1.0
STOP_GRACE_SECONDS = 30.0


class ProcessingFailed(Exception):
    pass


@dataclass
class _Instance:
    host: str
    root: Path
    handle: str
    log: Path
    status: InstanceStatus | None = None


LOG_GROUP = "/aws/sagemaker/ProcessingJobs"


class ProcessingEngine:
    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        # (instance, S3 URL) -> (size, mtime) of what was uploaded, so Continuous outputs
        # upload only what changed
        self._uploaded: dict[tuple[str, str], tuple[int, int]] = {}

    @property
    def jobs_dir(self) -> Path:
        return self.ctx.settings.home / "jobs" / "processing"

    def submit(self, name: str, recovering: bool = False) -> None:
        with self._lock:
            stop = self._stops.setdefault(name, threading.Event())
        thread = threading.Thread(
            target=self._run, args=(name, stop, recovering), name=f"processing-{name}", daemon=True
        )
        thread.start()

    def stop(self, name: str) -> None:
        with self._lock:
            event = self._stops.get(name)
        if event is not None:
            event.set()

    def recover(self) -> None:
        for status in ("InProgress", "Stopping"):
            page = self.ctx.store.list_records(ListQuery(kind=KIND, status=status, limit=1000))
            for record in page.records:
                self.submit(record.name, recovering=True)
                if status == "Stopping":
                    self.stop(record.name)

    # --- one job ------------------------------------------------------------------------------

    def _update(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        def mutate(record: Record) -> None:
            change(record.body)
            record.status = record.body.get("ProcessingJobStatus")

        self.ctx.store.update(KIND, name, mutate, self.ctx.clock.now())

    def _run(self, name: str, stop: threading.Event, recovering: bool) -> None:
        record = self.ctx.store.get(KIND, name)
        if record is None:
            return
        try:
            if recovering and record.body.get("_Instances"):
                running = [_Instance(i["Host"], Path(i["Root"]), i["Handle"], Path(i["Log"]))
                           for i in record.body["_Instances"]]  # fmt: skip
                if all(self.ctx.executor.poll(i.handle).state is State.LOST for i in running):
                    raise ProcessingFailed(
                        "InternalServerError: the Salvia server restarted and the job's "
                        "instances were gone when it came back."
                    )
            elif recovering:
                raise ProcessingFailed(
                    "InternalServerError: the Salvia server restarted before the job's "
                    "instances started."
                )
            else:
                running = self._start(record)
            status, message = self._watch(record, running, stop)
            self._upload(record, running, final=True)
            self._finish(name, status, message if status != "Failed" else "", message)
        except ProcessingFailed as failure:
            self._finish(name, "Failed", "", str(failure))
        except Exception as error:  # a bug of ours must still end the job
            log.exception("processing job %s", name)
            self._finish(name, "Failed", "", f"InternalServerError: {error}")
        finally:
            with self._lock:
                self._stops.pop(name, None)

    def _finish(self, name: str, status: str, exit_message: str, reason: str) -> None:
        now = self.ctx.clock.now()

        def change(body: dict[str, Any]) -> None:
            body["ProcessingJobStatus"] = status
            body["ProcessingEndTime"] = now
            body.setdefault("ProcessingStartTime", now)
            if exit_message:
                body["ExitMessage"] = exit_message[:1024]
            if status == "Failed":
                body["FailureReason"] = reason[:1024]

        self._update(name, change)

    def _start(self, record: Record) -> list[_Instance]:
        body = record.body
        resources = body["ProcessingResources"]["ClusterConfig"]
        count = int(resources.get("InstanceCount", 1))
        instance_type = lookup_instance_type(resources["InstanceType"])
        hosts = [f"algo-{i + 1}" for i in range(count)]
        runtime = self.ctx.runtimes.resolve(body["AppSpecification"]["ImageUri"])
        job_dir = self.jobs_dir / record.name
        shutil.rmtree(job_dir, ignore_errors=True)
        env = base_environment(self.ctx, record)
        started: list[_Instance] = []
        try:
            for index, host in enumerate(hosts):
                root = job_dir / host
                self._lay_out(record, root, host, hosts, index)
                spec = InstanceSpec(
                    job_name=record.name,
                    host=host,
                    command=_command(body["AppSpecification"], runtime.python, root),
                    env=env,
                    workdir=root,
                    log_path=job_dir / f"{host}.log",
                    vcpus=instance_type.vcpus_on_host,
                    memory_mib=instance_type.memory_mib_on_host,
                    mount_opt_ml=True,
                    network_isolation=bool(
                        (body.get("NetworkConfig") or {}).get("EnableNetworkIsolation")
                    ),
                )
                handle = self.ctx.executor.start(spec)
                started.append(_Instance(host, root, handle.handle, spec.log_path))
        except IsolationUnavailable as error:
            for instance in started:
                self.ctx.executor.stop(instance.handle, grace_seconds=0)
            message = f"ClientError: network isolation is unavailable: {error}"
            raise ProcessingFailed(message) from None
        except (channels.ChannelError, OSError) as error:
            for instance in started:
                self.ctx.executor.stop(instance.handle, grace_seconds=0)
            raise ProcessingFailed(f"ClientError: {error}") from None
        now = self.ctx.clock.now()
        recorded = [{"Host": i.host, "Root": str(i.root), "Handle": i.handle, "Log": str(i.log)}
                    for i in started]  # fmt: skip

        def change(body: dict[str, Any]) -> None:
            body["ProcessingStartTime"] = now
            body["_Instances"] = recorded

        self._update(record.name, change)
        return started

    def _lay_out(self, record: Record, root: Path, host: str, hosts: list[str], index: int) -> None:
        """`/opt/ml/config/*.json` and every input at its LocalPath."""
        config = root / "config"
        config.mkdir(parents=True, exist_ok=True)
        public = {k: v for k, v in record.body.items() if not k.startswith("_")}
        public["ProcessingJobArn"] = record.arn
        (config / "processingjobconfig.json").write_text(json.dumps(public, default=str))
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": hosts})
        )
        for item in record.body.get("ProcessingInputs") or []:
            s3 = item.get("S3Input")
            if not s3:
                continue
            local = Path(within(root, s3["LocalPath"]))
            channel = {
                "ChannelName": local.name,
                "DataSource": {"S3DataSource": {
                    "S3Uri": s3["S3Uri"],
                    "S3DataType": s3.get("S3DataType", "S3Prefix"),
                    "S3DataDistributionType": s3.get("S3DataDistributionType", "FullyReplicated"),
                }},
                "CompressionType": s3.get("S3CompressionType", "None"),
            }  # fmt: skip
            channels.stage_channels(self.ctx.objects, [channel], local.parent, index, len(hosts))
        for output in (record.body.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
            s3 = output.get("S3Output")
            if s3:
                Path(within(root, s3["LocalPath"])).mkdir(parents=True, exist_ok=True)

    def _watch(
        self, record: Record, running: list[_Instance], stop: threading.Event
    ) -> tuple[str, str]:
        max_runtime = (record.body.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        started_at = record.body.get("ProcessingStartTime") or self.ctx.clock.now()
        mirrors = [self._mirror(record, i) for i in running]
        try:
            return self._follow(record, running, stop, max_runtime, started_at, mirrors)
        finally:
            for mirror in mirrors:
                mirror.copy(final=True)

    def _mirror(self, record: Record, instance: _Instance) -> logfile.Mirror:
        stream = f"{record.name}/{instance.host}-{int(record.creation_time)}"
        path = logfile.stream_path(self.ctx.logs_root, LOG_GROUP, stream)
        return logfile.Mirror(instance.log, path)

    def _follow(
        self,
        record: Record,
        running: list[_Instance],
        stop: threading.Event,
        max_runtime: float | None,
        started_at: float,
        mirrors: list[logfile.Mirror],
    ) -> tuple[str, str]:
        last_upload = time.monotonic()
        reason = ""
        while True:
            for mirror in mirrors:
                mirror.copy()
            for instance in running:
                if instance.status is None or instance.status.state is State.RUNNING:
                    instance.status = self.ctx.executor.poll(instance.handle)
            done = [i for i in running if i.status and i.status.state is not State.RUNNING]
            failed = [i for i in done if not _succeeded(i.status)]
            if len(done) == len(running) or failed:
                break
            if stop.is_set():
                reason = "stopped"
                self._update(record.name, lambda b: b.update(ProcessingJobStatus="Stopping"))
                break
            if max_runtime and self.ctx.clock.now() - started_at > max_runtime:
                reason = "max_runtime"
                break
            if time.monotonic() - last_upload > CONTINUOUS_SECONDS:
                self._upload(record, running, final=False)
                last_upload = time.monotonic()
            time.sleep(POLL_SECONDS)
        if reason or failed:
            for instance in running:
                if instance.status is None or instance.status.state is State.RUNNING:
                    grace = STOP_GRACE_SECONDS if reason else 5.0
                    instance.status = self.ctx.executor.stop(instance.handle, grace)
        if reason == "max_runtime":
            return "Stopped", "Job stopped: it exceeded MaxRuntimeInSeconds"
        if reason:
            return "Stopped", "Processing job stopped by request"
        if failed:
            instance = failed[0]
            code = instance.status.exit_code if instance.status else None
            return "Failed", (
                f"AlgorithmError: instance {instance.host} exited with code {code}. "
                f"Last log lines: {_tail(instance.log)}"
            )
        return "Completed", ""

    def _upload(self, record: Record, running: list[_Instance], final: bool) -> None:
        """Outputs to S3: `Continuous` ones on every pass, `EndOfJob` ones at the end (each
        instance's files under the same prefix, as SageMaker uploads them)."""
        outputs = (record.body.get("ProcessingOutputConfig") or {}).get("Outputs") or []
        for output in outputs:
            s3 = output.get("S3Output")
            if not s3 or (not final and s3.get("S3UploadMode", "EndOfJob") != "Continuous"):
                continue
            for instance in running:
                local = Path(within(instance.root, s3["LocalPath"]))
                if not local.is_dir():
                    continue
                for path in sorted(p for p in local.rglob("*") if p.is_file()):
                    relative = path.relative_to(local).as_posix()
                    target = f"{s3['S3Uri'].rstrip('/')}/{relative}"
                    stamp = (path.stat().st_size, path.stat().st_mtime_ns)
                    if self._uploaded.get((instance.handle, target)) == stamp:
                        continue
                    self.ctx.objects.put_file(target, path)
                    self._uploaded[(instance.handle, target)] = stamp


def within(root: Path, local_path: str) -> str:
    """Where a `/opt/ml/...` path lives under the instance root on the host."""
    return str(root / local_path.removeprefix(OPT_ML).lstrip("/"))


def _command(app: dict[str, Any], python: str, root: Path) -> list[str]:
    """The entrypoint and arguments; `/opt/ml/...` arguments name the instance root on the host,
    which is the same directory whether or not the namespace mounted it at `/opt/ml`."""
    entrypoint = list(app.get("ContainerEntrypoint") or [])
    arguments = list(app.get("ContainerArguments") or [])
    command = entrypoint + arguments
    if not command:
        raise ProcessingFailed(
            "ClientError: AppSpecification needs a ContainerEntrypoint (the image's own "
            "entrypoint is not known to Salvia)."
        )
    if command[0] in ("python", "python3") or command[0].startswith("/usr/bin/python"):
        command[0] = python
    return [within(root, a) if a.startswith(OPT_ML) else a for a in command]


def _succeeded(status: InstanceStatus | None) -> bool:
    return status is not None and status.state is State.EXITED and status.exit_code == 0


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:600]
