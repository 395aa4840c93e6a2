"""The training engine: runs each training job's lifecycle in its own thread.

Starting -> Downloading -> Training -> Uploading -> Completed | Failed | Stopped, with SageMaker's
secondary statuses. Every transition is written to the metadata store before it is acted on, and
each instance's executor handle is stored as soon as it starts, so a restarted server re-attaches
to instances that still run (or marks the job Failed with the reason when they are gone).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salvia.clock import Clock
from salvia.compute.executor import Executor
from salvia.compute.runtimes import RuntimeRegistry
from salvia.config import Settings
from salvia.store.metadata import ListQuery, MetadataStore, Record
from salvia.store.objects import ObjectStore

log = logging.getLogger(__name__)

KIND = "training-job"
ACTIVE_STATUSES = ("InProgress", "Stopping")


@dataclass
class EngineContext:
    settings: Settings
    store: MetadataStore
    objects: ObjectStore
    executor: Executor
    runtimes: RuntimeRegistry
    clock: Clock
    # the server's own address, for the S3/SageMaker endpoints a script's boto3 should use
    public_url: str = ""
    # called once a job has ended, with its final record (experiment trial components, ...)
    on_finished: Callable[[Record], None] | None = None
    # authenticated mode: (role ARN, job name) -> the role's temporary credentials as the
    # AWS_* variables, so what a job may do with them is what its execution role allows
    role_credentials: Callable[[str, str], dict[str, str]] | None = None

    @property
    def jobs_dir(self) -> Path:
        return self.settings.home / "jobs" / "training"

    @property
    def logs_root(self) -> Path:
        return self.settings.home / "logs"


class TrainingEngine:
    """Owns the threads of running jobs. Thread-safe."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._runs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def submit(self, name: str) -> None:
        from salvia.training.run import JobRun

        self._start(JobRun(self, name, recovering=False))

    def stop(self, name: str) -> bool:
        """Ask a running job to stop; False when no run of it is active in this server."""
        with self._lock:
            run = self._runs.get(name.lower())
        if run is None:
            return False
        run.request_stop("user")
        return True

    def recover(self) -> None:
        """Re-attach to (or fail) the jobs a previous server left in progress."""
        from salvia.training.run import JobRun

        for status in ACTIVE_STATUSES:
            query = ListQuery(kind=KIND, status=status, limit=1000, descending=False)
            for record in self.ctx.store.list_records(query).records:
                self._start(JobRun(self, record.name, recovering=True))

    def _start(self, run: Any) -> None:
        with self._lock:
            if self._closing.is_set():
                return
            self._runs[run.job_name.lower()] = run
        run.start()

    def finished(self, name: str) -> None:
        with self._lock:
            self._runs.pop(name.lower(), None)

    def active(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Leave running instances running (a restarted server re-attaches) and end the threads."""
        self._closing.set()
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.detach()
        for run in runs:
            run.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()
