"""One training job's run: stage the instances, start them, watch them, collect what they made."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salvia import logfile
from salvia.compute.executor import InstanceStatus, IsolationUnavailable, State
from salvia.store.metadata import MetricPoint, Record
from salvia.training import instances
from salvia.training.artifacts import CheckpointSync, join_url, upload_archive
from salvia.training.engine import KIND, TrainingEngine
from salvia.training.metrics import MetricScraper, compile_definitions

log = logging.getLogger(__name__)

# How often a running job's instances are looked at: often at first, so that a short job's end
# is seen within a few milliseconds, then no more than this once it has run a while.
POLL_SECONDS = 0.1
FIRST_POLL_SECONDS = 0.01
CHECKPOINT_SECONDS = 5.0
STOP_GRACE_SECONDS = 120.0  # SageMaker's `docker stop -t 120`
FAILURE_REASON_LIMIT = 1024


class JobFailed(Exception):
    """Ends the job as Failed with this message as its FailureReason."""


@dataclass
class Outcome:
    status: str  # Completed | Failed | Stopped
    secondary: str
    message: str = ""
    failure_reason: str | None = None


@dataclass
class _Instance:
    host: str
    root: Path
    handle: str
    events: Path
    offset: int = 0
    status: InstanceStatus | None = field(default=None)


class JobRun(threading.Thread):
    def __init__(self, engine: TrainingEngine, name: str, recovering: bool) -> None:
        super().__init__(name=f"training-{name}", daemon=True)
        self.engine = engine
        self.ctx = engine.ctx
        self.job_name = name
        self.recovering = recovering
        self._stop_reason: str | None = None
        self._stop_requested = threading.Event()
        self._detached = threading.Event()
        self.scraper = MetricScraper([])
        self.metric_arns: list[str] = []

    # --- control from other threads ---------------------------------------------------------

    @property
    def name_key(self) -> str:
        return self.job_name.lower()

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_requested.set()

    def detach(self) -> None:
        self._detached.set()

    # --- store helpers ----------------------------------------------------------------------

    def _update(self, change: Callable[[dict[str, Any], Record], None]) -> Record:
        def mutate(record: Record) -> None:
            change(record.body, record)
            record.status = record.body.get("TrainingJobStatus")

        updated = self.ctx.store.update(KIND, self.job_name, mutate, self.ctx.clock.now())
        if updated is None:
            raise JobFailed("the training job record disappeared")
        return updated

    def _transition(self, secondary: str, message: str, **members: Any) -> Record:
        now = self.ctx.clock.now()

        def change(body: dict[str, Any], _: Record) -> None:
            transitions = body.setdefault("SecondaryStatusTransitions", [])
            if transitions and "EndTime" not in transitions[-1]:
                transitions[-1]["EndTime"] = now
            transitions.append({"Status": secondary, "StartTime": now, "StatusMessage": message})
            body["SecondaryStatus"] = secondary
            body.update(members)

        return self._update(change)

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            record = self.ctx.store.get(KIND, self.job_name)
            if record is None:
                return
            self.scraper = MetricScraper(
                compile_definitions(
                    record.body["AlgorithmSpecification"].get("MetricDefinitions", [])
                )
            )
            self.metric_arns = [record.arn, *record.body.get("_MetricArns", [])]
            outcome = self._recover(record) if self.recovering else self._attempts(record)
            if outcome is not None:
                self._finish(outcome)
        except JobFailed as failure:
            self._finish(Outcome("Failed", "Failed", failure_reason=str(failure)))
        except Exception as error:  # a bug of ours must still end the job, never hang it
            log.exception("training job %s failed inside Salvia", self.job_name)
            reason = f"InternalServerError: {type(error).__name__}: {error}"
            self._finish(Outcome("Failed", "Failed", failure_reason=reason))
        finally:
            self.engine.finished(self.job_name)

    def _attempts(self, record: Record) -> Outcome | None:
        retries = (record.body.get("RetryStrategy") or {}).get("MaximumRetryAttempts", 0)
        attempt = 0
        while True:
            attempt += 1
            outcome = self._attempt(record, attempt)
            if outcome is None or outcome.status != "Failed" or attempt > retries:
                return outcome
            if self._stop_requested.is_set():
                return outcome
            record = self._transition(
                "Restarting",
                f"Attempt {attempt} failed ({outcome.failure_reason}); "
                f"restarting ({attempt} of {retries} retries used)",
            )

    def _attempt(self, record: Record, attempt: int) -> Outcome | None:
        body = record.body
        self._transition("Downloading", "Downloading input data and code")
        job_dir = self.ctx.jobs_dir / self.job_name
        if job_dir.exists():
            shutil.rmtree(job_dir)
        prepared = instances.prepare(self.ctx, record, job_dir, attempt)
        if self._stop_requested.is_set():
            return Outcome("Stopped", "Stopped", "Stopped before training started")
        started: list[_Instance] = []
        try:
            for spec in prepared.specs:
                # when /opt/ml could not be mounted, the executor logs the notice itself
                handle = self.ctx.executor.start(spec)
                started.append(
                    _Instance(spec.host, spec.workdir, handle.handle, prepared.events[spec.host])
                )
        except IsolationUnavailable as error:
            self._stop_instances(started, grace=0)
            raise JobFailed(f"ClientError: network isolation is not available: {error}") from None
        now = self.ctx.clock.now()
        self._transition(
            "Training",
            "Training image download completed. Training in progress.",
            TrainingStartTime=body.get("TrainingStartTime") or now,
            _Instances=[
                {"Host": i.host, "Handle": i.handle, "Root": str(i.root), "Events": str(i.events)}
                for i in started
            ],
            _Checkpoints=prepared.checkpoint_dirs,
        )
        return self._watch(started, prepared.checkpoints)

    def _recover(self, record: Record) -> Outcome | None:
        recorded = record.body.get("_Instances")
        phase = record.body.get("SecondaryStatus")
        if not recorded or phase != "Training":
            raise JobFailed(
                f"InternalServerError: the Salvia server restarted while the job was {phase}; "
                "its instances were not running yet and the job cannot resume."
            )
        running = [
            _Instance(i["Host"], Path(i["Root"]), i["Handle"], Path(i["Events"])) for i in recorded
        ]
        statuses = [self.ctx.executor.poll(i.handle) for i in running]
        if all(s.state is State.LOST for s in statuses):
            raise JobFailed(
                "InternalServerError: the Salvia server restarted and the job's instances "
                "were gone when it came back."
            )
        if record.body.get("TrainingJobStatus") == "Stopping":
            self.request_stop("user")  # a stop asked of the previous server still stands
        checkpoints = instances.checkpoint_syncs(self.ctx, record)
        offsets = record.body.get("_LogOffsets", {})
        for instance in running:  # rebuild final metric values without storing points twice
            instance.offset = offsets.get(instance.host, 0)
            for event in logfile.read(instance.events):
                if event.offset >= instance.offset:
                    break
                self.scraper.feed(event.message, event.timestamp / 1000)
        log.info("re-attached to training job %s", self.job_name)
        return self._watch(running, checkpoints)

    def _watch(self, running: list[_Instance], checkpoints: list[CheckpointSync]) -> Outcome | None:
        record = self.ctx.store.get(KIND, self.job_name)
        assert record is not None
        stopping = record.body.get("StoppingCondition") or {}
        max_runtime = stopping.get("MaxRuntimeInSeconds")
        max_wait = (
            stopping.get("MaxWaitTimeInSeconds")
            if record.body.get("EnableManagedSpotTraining")
            else None
        )
        started_at = record.body.get("TrainingStartTime") or self.ctx.clock.now()
        last_checkpoint = watch_started = time.monotonic()
        stop_reason: str | None = None
        while True:
            if self._detached.is_set():
                self._save_offsets(running)
                return None
            self._collect_logs(running)
            for instance in running:
                if instance.status is None or instance.status.state is State.RUNNING:
                    instance.status = self.ctx.executor.poll(instance.handle)
            done = [i for i in running if i.status and i.status.state is not State.RUNNING]
            failed = [i for i in done if not _succeeded(i.status)]
            if len(done) == len(running) or failed or stop_reason:
                break
            now = self.ctx.clock.now()
            if self._stop_requested.is_set():
                stop_reason = self._stop_reason or "user"
            elif max_runtime and now - started_at > max_runtime:
                stop_reason = "max_runtime"
            elif max_wait and now - record.creation_time > max_wait:
                stop_reason = "max_wait"
            if stop_reason:
                break
            if checkpoints and time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                for sync in checkpoints:
                    sync.upload_changed()
                self._save_offsets(running)
                last_checkpoint = time.monotonic()
            watched = time.monotonic() - watch_started
            time.sleep(min(POLL_SECONDS, max(FIRST_POLL_SECONDS, watched / 50)))

        if stop_reason or failed:
            if stop_reason:
                self._transition("Stopping", "Stopping the training job")
            self._stop_instances(running, grace=STOP_GRACE_SECONDS if stop_reason else 5.0)
        self._collect_logs(running)
        for sync in checkpoints:
            sync.upload_changed()
        if stop_reason == "max_runtime":
            return Outcome(
                "Stopped", "MaxRuntimeExceeded", "Job stopped: it exceeded MaxRuntimeInSeconds"
            )
        if stop_reason == "max_wait":
            return Outcome(
                "Stopped", "MaxWaitTimeExceeded", "Job stopped: it exceeded MaxWaitTimeInSeconds"
            )
        if stop_reason:
            return Outcome("Stopped", "Stopped", "Training job stopped by request")
        if failed:
            return Outcome("Failed", "Failed", failure_reason=self._failure_reason(failed))
        return Outcome("Completed", "Completed", "Training job completed")

    def _stop_instances(self, running: list[_Instance], grace: float) -> None:
        threads = [
            threading.Thread(target=self._stop_one, args=(instance, grace), daemon=True)
            for instance in running
            if instance.status is None or instance.status.state is State.RUNNING
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _stop_one(self, instance: _Instance, grace: float) -> None:
        try:
            instance.status = self.ctx.executor.stop(instance.handle, grace)
        except Exception:
            log.exception("stopping %s of %s", instance.host, self.job_name)

    def _collect_logs(self, running: list[_Instance]) -> None:
        points: list[MetricPoint] = []
        for instance in running:
            for event in logfile.read(instance.events, instance.offset):
                points.extend(self.scraper.feed(event.message, event.timestamp / 1000))
                instance.offset = event.end
        if points:
            for arn in self.metric_arns:
                self.ctx.store.put_metrics(arn, points)

    def _save_offsets(self, running: list[_Instance]) -> None:
        offsets = {i.host: i.offset for i in running}

        def change(body: dict[str, Any], _: Record) -> None:
            body["_LogOffsets"] = offsets

        self._update(change)

    def _failure_reason(self, failed: list[_Instance]) -> str:
        for instance in failed:
            failure = instance.root / "output" / "failure"
            if failure.is_file():
                text = failure.read_text(errors="replace").strip()
                if text:
                    return text[:FAILURE_REASON_LIMIT]
        instance = failed[0]
        code = instance.status.exit_code if instance.status else None
        last = _last_line(instance.events)
        detail = f" Last log line: {last}" if last else ""
        if instance.status and instance.status.state is State.LOST:
            return f"InternalServerError: instance {instance.host} was lost.{detail}"[:1024]
        reason = f"AlgorithmError: the training process on {instance.host} exited with code {code}."
        return (reason + detail)[:FAILURE_REASON_LIMIT]

    # --- the end ----------------------------------------------------------------------------

    def _finish(self, outcome: Outcome) -> None:
        if self._detached.is_set() and outcome.status != "Failed":
            return
        try:
            record = self.ctx.store.get(KIND, self.job_name)
            if record is None:
                return
            artifacts = self._upload(record, outcome)
        except Exception as error:
            log.exception("uploading the artifacts of %s", self.job_name)
            outcome = Outcome("Failed", "Failed", failure_reason=f"ClientError: upload: {error}")
            artifacts = {}
        now = self.ctx.clock.now()
        final_metrics = self.scraper.final_metric_data()

        def change(body: dict[str, Any], _: Record) -> None:
            transitions = body.setdefault("SecondaryStatusTransitions", [])
            if transitions and "EndTime" not in transitions[-1]:
                transitions[-1]["EndTime"] = now
            message = outcome.message or (outcome.failure_reason or "")[:256]
            transitions.append(
                {
                    "Status": outcome.secondary,
                    "StartTime": now,
                    "EndTime": now,
                    "StatusMessage": message,
                }
            )
            body["TrainingJobStatus"] = outcome.status
            body["SecondaryStatus"] = outcome.secondary
            if outcome.failure_reason:
                body["FailureReason"] = outcome.failure_reason
            body.update(artifacts)
            start = body.get("TrainingStartTime")
            if start:
                body["TrainingEndTime"] = now
                seconds = max(round(now - start), 1)
                body["TrainingTimeInSeconds"] = seconds
                body["BillableTimeInSeconds"] = seconds
            if final_metrics:
                body["FinalMetricDataList"] = final_metrics
            for internal in ("_Instances", "_LogOffsets"):
                body.pop(internal, None)

        final = self._update(change)
        self._tidy()
        if self.ctx.on_finished is not None:
            try:
                self.ctx.on_finished(final)
            except Exception:
                log.exception("after-finish hook of %s", self.job_name)

    def _upload(self, record: Record, outcome: Outcome) -> dict[str, Any]:
        job_dir = self.ctx.jobs_dir / self.job_name
        if outcome.status == "Failed" or not job_dir.exists():
            return {}
        self._transition("Uploading", "Uploading generated training model")
        hosts = sorted(p for p in job_dir.iterdir() if p.is_dir() and p.name.startswith("algo-"))
        output = join_url(record.body["OutputDataConfig"]["S3OutputPath"], self.job_name, "output")
        scratch = self.ctx.settings.runtime_dir / "artifacts"
        members: dict[str, Any] = {}
        model_dirs = [h / "model" for h in hosts]
        completed = outcome.status == "Completed"
        url = upload_archive(
            self.ctx.objects,
            model_dirs,
            join_url(output, "model.tar.gz"),
            scratch,
            even_if_empty=completed,
        )
        if url:
            members["ModelArtifacts"] = {"S3ModelArtifacts": url}
        upload_archive(
            self.ctx.objects,
            [h / "output" / "data" for h in hosts],
            join_url(output, "output.tar.gz"),
            scratch,
        )
        return members

    def _tidy(self) -> None:
        """Drop staged input data (a copy of what is in the object store); keep the rest."""
        job_dir = self.ctx.jobs_dir / self.job_name
        if job_dir.exists():
            for data in job_dir.glob("algo-*/input/data"):
                shutil.rmtree(data, ignore_errors=True)


def _succeeded(status: InstanceStatus | None) -> bool:
    return status is not None and status.state is State.EXITED and status.exit_code == 0


def _last_line(path: Path) -> str:
    last = ""
    for event in logfile.read(path):
        if event.message.strip():
            last = event.message.strip()
    return last[:400]
