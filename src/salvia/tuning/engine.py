"""The tuning engine: one reconciler thread drives every active tuning job.

Each pass over a job reads its record and its trials' training jobs, tells the optimizer what
finished, reports intermediate objective values (and stops a trial the pruner rejects), checks
the completion criteria and limits, and starts new trials up to `MaxParallelTrainingJobs`.

A trial is written into the tuning job's record (name, parameters, optimizer bookkeeping)
before its training job is created, and its result is read from that training job, so a
restarted server rebuilds each optimizer from the store: no finished trial is lost or run again,
and a trial whose training job was not created yet is created then.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from salvia.clock import Clock
from salvia.store.metadata import ListQuery, MetadataStore, Record
from salvia.tuning.optimizer import Optimizer, PastTrial, make_pruner, make_sampler, signed
from salvia.tuning.plan import TrialDefinition, TuningPlan
from salvia.tuning.progress import Progress

log = logging.getLogger(__name__)

KIND = "hyper-parameter-tuning-job"
TRAINING_KIND = "training-job"
ACTIVE_STATUSES = ("InProgress", "Stopping")
TRIAL_ENDED = ("Completed", "Failed", "Stopped")
POLL_SECONDS = 0.2


@dataclass
class TuningContext:
    store: MetadataStore
    clock: Clock
    # CreateTrainingJob and StopTrainingJob as the training family answers them
    create_training_job: Callable[[dict[str, Any]], Any]
    stop_training_job: Callable[[str], Any]


class TuningEngine:
    """Owns the reconciler thread. `submit` and `wake` are safe from any thread."""

    def __init__(self, ctx: TuningContext) -> None:
        self.ctx = ctx
        self._names: set[str] = set()
        self._runs: dict[str, TuningRun] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Resume the tuning jobs a previous server left active, then begin reconciling."""
        for status in ACTIVE_STATUSES:
            query = ListQuery(kind=KIND, status=status, limit=1000, descending=False)
            for record in self.ctx.store.list_records(query).records:
                self.submit(record.name)
        self._thread = threading.Thread(target=self._loop, name="tuning", daemon=True)
        self._thread.start()

    def submit(self, name: str) -> None:
        with self._lock:
            self._names.add(name)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                names = sorted(self._names)
            for name in names:
                if self._closing.is_set():
                    return
                if self._step(name):
                    with self._lock:
                        self._names.discard(name)
                    self._runs.pop(name, None)
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _step(self, name: str) -> bool:
        try:
            run = self._runs.get(name)
            if run is None:
                run = self._runs[name] = TuningRun(self.ctx, name)
            return run.step()
        except Exception as error:  # a bug of ours must end the job, never spin on it
            log.exception("tuning job %s failed inside Salvia", name)
            TuningRun.fail(self.ctx, name, f"InternalServerError: {type(error).__name__}: {error}")
            return True


class TuningRun:
    """One tuning job's optimizer and the bookkeeping of its trials. Used by one thread."""

    def __init__(self, ctx: TuningContext, name: str) -> None:
        self.ctx = ctx
        self.name = name
        record = self._record()
        self.plan = TuningPlan.parse(record.body)
        definitions = self.plan.optimizer_definitions()
        self.optimizer = Optimizer(
            definitions,
            make_sampler(self.plan.strategy, definitions, self.plan.seed, self.plan.max_parallel),
            make_pruner(self.plan.strategy, self.plan.early_stopping, self.plan.hyperband),
        )
        for past in record.body.get("_Priors") or []:
            self.optimizer.add_prior(PastTrial(past["Params"], value=past["Value"]))
        for trial in record.body.get("_Trials") or []:
            self.optimizer.add(trial["Name"], self._past(trial))
        self._stopping_sent: set[str] = set()

    # --- store helpers ----------------------------------------------------------------------

    def _record(self) -> Record:
        record = self.ctx.store.get(KIND, self.name)
        if record is None:
            raise LookupError(f"tuning job {self.name} disappeared")
        return record

    def _update(self, change: Callable[[dict[str, Any]], None]) -> Record | None:
        def mutate(record: Record) -> None:
            change(record.body)
            record.status = record.body["HyperParameterTuningJobStatus"]

        return self.ctx.store.update(KIND, self.name, mutate, self.ctx.clock.now())

    @staticmethod
    def fail(ctx: TuningContext, name: str, reason: str) -> None:
        now = ctx.clock.now()

        def mutate(record: Record) -> None:
            if record.body["HyperParameterTuningJobStatus"] in ACTIVE_STATUSES:
                record.body.update(
                    HyperParameterTuningJobStatus="Failed",
                    FailureReason=reason[:1024],
                    HyperParameterTuningEndTime=now,
                )
                record.status = "Failed"

        ctx.store.update(KIND, name, mutate, now)

    def _definition(self, trial: dict[str, Any]) -> TrialDefinition:
        return self.plan.definitions[trial["Definition"]]

    def _past(self, trial: dict[str, Any]) -> PastTrial:
        """A stored trial as the optimizer learns it, from its training job's record."""
        definition = self._definition(trial)
        job = self.ctx.store.get(TRAINING_KIND, trial["Name"])
        steps = self._steps(job, definition) if job is not None else {}
        past = PastTrial(trial["Params"], trial.get("SystemAttrs") or {}, intermediate=steps)
        if trial.get("Final") or (job is not None and job.body["TrainingJobStatus"] in TRIAL_ENDED):
            status, value = _result(job, definition) if job else (trial["Status"], None)
            past.state = _state(status, value, trial)
            past.value = None if value is None else signed(value, definition.maximize)
        return past

    def _steps(self, job: Record, definition: TrialDefinition) -> dict[int, float]:
        points = self.ctx.store.get_metrics(job.arn, definition.metric)
        return {step: signed(p.value, definition.maximize) for step, p in enumerate(points)}

    # --- one pass ---------------------------------------------------------------------------

    def step(self) -> bool:
        """Reconcile once; True when the tuning job has ended."""
        record = self._record()
        body = record.body
        if body["HyperParameterTuningJobStatus"] not in ACTIVE_STATUSES:
            return True
        trials: list[dict[str, Any]] = body.get("_Trials") or []
        updates: dict[int, dict[str, Any]] = {}
        for index, trial in enumerate(trials):
            if not trial.get("Final"):
                change = self._observe(record, trial)
                if change:
                    updates[index] = change
        merged = [{**t, **updates.get(i, {})} for i, t in enumerate(trials)]
        progress = Progress(self.plan, merged, body, self.ctx.clock.now())
        ending = body.get("_Ending") or progress.ending_reason(
            body["HyperParameterTuningJobStatus"]
        )
        running = [t for t in merged if not t.get("Final")]
        if ending:
            for trial in running:
                self._stop_trial(trial["Name"])
        new: list[dict[str, Any]] = []
        if not ending:
            free = self.plan.max_parallel - len(running)
            room = self.plan.max_jobs - len(merged)
            for _ in range(max(0, min(free, room))):
                if self.optimizer.grid_exhausted():
                    break
                new.append(self._ask(len(merged) + len(new)))
        done = not running and not new and (ending or len(merged) >= self.plan.max_jobs)
        done = done or (not running and not new and self.optimizer.grid_exhausted())
        now = self.ctx.clock.now()

        def save(current: dict[str, Any]) -> None:
            stored = current.get("_Trials") or []
            for index, values in updates.items():
                stored[index].update(values)
            stored.extend(new)
            current["_Trials"] = stored
            if ending and not current.get("_Ending"):
                current["_Ending"] = ending
            Progress(self.plan, stored, current, now).summarize(current)
            if done:
                current.update(progress.final_status(current, ending))
                current["HyperParameterTuningEndTime"] = now
                current.pop("_Ending", None)

        self._update(save)
        tags = self.ctx.store.get_tags(record.arn) if new else []
        for trial in new:
            self._launch(record, trial, tags)
        return bool(done)

    def _observe(self, record: Record, trial: dict[str, Any]) -> dict[str, Any]:
        definition = self._definition(trial)
        job = self.ctx.store.get(TRAINING_KIND, trial["Name"])
        if job is None:  # written, but the previous server ended before creating it
            self._launch(record, trial, self.ctx.store.get_tags(record.arn))
            return {}
        status = job.body["TrainingJobStatus"]
        change: dict[str, Any] = {}
        if status != trial.get("Status"):
            change["Status"] = status
        if status in TRIAL_ENDED:
            status, value = _result(job, definition)
            state = _state(status, value, trial)
            self.optimizer.tell(
                trial["Name"], state, None if value is None else signed(value, definition.maximize)
            )
            change.update(_summary_members(job), Final=True, Objective=value)
            return change
        if status == "InProgress" and not trial.get("EarlyStopped"):
            for step, value in sorted(self._steps(job, definition).items()):
                if self.optimizer.report(trial["Name"], step, value):
                    log.info("tuning job %s stops trial %s early", self.name, trial["Name"])
                    change["EarlyStopped"] = True
                    self._stop_trial(trial["Name"], remember=change)
                    break
        return change

    def _stop_trial(self, name: str, remember: dict[str, Any] | None = None) -> None:
        if name in self._stopping_sent:
            return
        self._stopping_sent.add(name)
        if remember is not None:
            # the reason is stored before the stop, so a restart still knows it was early
            def mark(body: dict[str, Any]) -> None:
                for trial in body.get("_Trials") or []:
                    if trial["Name"] == name:
                        trial.update(remember)

            self._update(mark)
        try:
            self.ctx.stop_training_job(name)
        except Exception as error:  # it may have ended meanwhile
            log.debug("stopping trial %s: %s", name, error)

    def _ask(self, number: int) -> dict[str, Any]:
        name = f"{self.name}-{number + 1:03d}-{uuid.uuid4().hex[:8]}"
        index, params, attrs = self.optimizer.ask(name)
        definition = self.plan.definitions[index]
        tuned = {
            item.name: item.hyperparameter(params[item.key])
            for item in definition.space.ranges
            if item.key in params
        }
        return {
            "Name": name,
            "Definition": index,
            "Params": params,
            "SystemAttrs": attrs,
            "TunedHyperParameters": tuned,
            "Status": "InProgress",
            "CreationTime": self.ctx.clock.now(),
        }

    def _launch(self, record: Record, trial: dict[str, Any], tags: list[tuple[str, str]]) -> None:
        request = self.plan.training_request(
            trial["Definition"],
            trial["Name"],
            trial["TunedHyperParameters"],
            record.arn,
            [{"Key": k, "Value": v} for k, v in tags],
        )
        try:
            self.ctx.create_training_job(request)
        except Exception as error:
            if self.ctx.store.get(TRAINING_KIND, trial["Name"]) is not None:
                return  # created by an earlier attempt
            reason = getattr(error, "message", None) or str(error)
            log.warning(
                "tuning job %s could not start trial %s: %s", self.name, trial["Name"], reason
            )
            self.optimizer.tell(trial["Name"], "FAIL", None)

            def failed(body: dict[str, Any]) -> None:
                for stored in body.get("_Trials") or []:
                    if stored["Name"] == trial["Name"]:
                        stored.update(Status="Failed", Final=True, FailureReason=reason[:1024])

            self._update(failed)


def _result(job: Record, definition: TrialDefinition) -> tuple[str, float | None]:
    """A finished training job's status and final objective value (None if it reported none)."""
    status = job.body["TrainingJobStatus"]
    for metric in job.body.get("FinalMetricDataList") or []:
        if metric["MetricName"] == definition.metric:
            return status, float(metric["Value"])
    return status, None


def _state(status: str, value: float | None, trial: dict[str, Any]) -> str:
    if status == "Completed" and value is not None:
        return "COMPLETE"
    if status == "Stopped" and (trial.get("EarlyStopped") or value is not None):
        return "PRUNED"
    return "FAIL"


def _summary_members(job: Record) -> dict[str, Any]:
    body = job.body
    members = {
        key: body[key]
        for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason")
        if body.get(key) is not None
    }
    members.update(CreationTime=job.creation_time, TrainingJobArn=job.arn)
    return members
