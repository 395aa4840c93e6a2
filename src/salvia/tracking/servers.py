"""Platform-managed MLflow tracking servers: each a real `mlflow server` process on loopback,
started through the Executor (so it outlives a server restart and is re-attached), with its
backend store (SQLite) under `<home>/mlflow/<name>/` and its artifacts in the server's
`ArtifactStoreUri`, proxied through MLflow (`--serve-artifacts`) to Salvia's own S3 API.

States follow SageMaker's: Creating -> Created, Stopping -> Stopped, Starting -> Started,
Deleting -> (gone), or *Failed with the reason. A training job whose `Environment` sets
`MLFLOW_TRACKING_URI` to a tracking server's ARN gets the server's URL instead, as the
`sagemaker-mlflow` plugin resolves it on AWS.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salvia.clock import Clock
from salvia.compute.executor import Executor, InstanceSpec, State
from salvia.config import Settings
from salvia.store.metadata import ListQuery, MetadataStore, Record

log = logging.getLogger(__name__)

KIND = "mlflow-tracking-server"
START_TIMEOUT = 180.0
_RUNNING = {"Created", "Started", "Updated"}


@dataclass
class TrackingContext:
    settings: Settings
    store: MetadataStore
    executor: Executor
    clock: Clock
    public_url: Callable[[], str]  # Salvia's own URL, for the artifact proxy's S3 calls
    # authenticated mode: (role ARN, server name) -> the role's temporary credentials as the
    # AWS_* variables, for the artifact proxy's S3 calls
    role_credentials: Callable[[str, str], dict[str, str]] | None = None

    @property
    def root(self) -> Path:
        return self.settings.home / "mlflow"


def mlflow_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("mlflow")
    except Exception:  # the `mlflow` extra is not installed
        return None


class TrackingServers:
    def __init__(self, ctx: TrackingContext) -> None:
        self.ctx = ctx

    # --- transitions, each in the background ----------------------------------------------

    def start(self, name: str, starting: str = "Creating", done: str = "Created") -> None:
        threading.Thread(
            target=self._start, args=(name, starting, done), name=f"mlflow-{name}", daemon=True
        ).start()

    def stop(self, name: str, then_delete: bool = False) -> None:
        threading.Thread(
            target=self._stop, args=(name, then_delete), name=f"mlflow-{name}", daemon=True
        ).start()

    def recover(self) -> None:
        """Servers that were running run again (re-attached when their process survived)."""
        for record in self.ctx.store.list_records(ListQuery(kind=KIND, limit=1000)).records:
            status = record.body.get("TrackingServerStatus")
            handle = record.body.get("_Handle")
            alive = handle is not None and self.ctx.executor.poll(handle).state is State.RUNNING
            if status in _RUNNING | {"Creating", "Starting", "Updating"} and not alive:
                done = "Created" if status == "Creating" else "Started"
                self.start(record.name, status if status != "Created" else "Starting", done)
            elif status == "Stopping":
                self.stop(record.name)
            elif status == "Deleting":
                self.stop(record.name, then_delete=True)

    def _set(self, name: str, **members: Any) -> None:
        def change(record: Record) -> None:
            record.body.update(members)
            record.status = record.body.get("TrackingServerStatus")

        self.ctx.store.update(KIND, name, change, self.ctx.clock.now())

    def _start(self, name: str, starting: str, done: str) -> None:
        record = self.ctx.store.get(KIND, name)
        if record is None:
            return
        self._set(name, TrackingServerStatus=starting)
        failed = "CreateFailed" if done == "Created" else "StartFailed"
        try:
            handle, port = self._launch(record)
            self._wait_healthy(handle, port, record)
        except Exception as error:
            log.warning("MLflow tracking server %s did not start: %s", name, error)
            self._set(name, TrackingServerStatus=failed, IsActive="Inactive",
                      _FailureReason=str(error)[:1024])  # fmt: skip
            return
        self._set(
            name,
            TrackingServerStatus=done,
            IsActive="Active",
            TrackingServerUrl=f"http://127.0.0.1:{port}",
            _Handle=handle,
            _Port=port,
        )

    def _launch(self, record: Record) -> tuple[str, int]:
        directory = self.ctx.root / record.name
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        bin_dir = str(Path(sys.executable).parent)
        env = {k: os.environ[k] for k in ("LANG", "HOME", "TMPDIR") if k in os.environ}
        env.update(
            # mlflow execs uvicorn/gunicorn by name: the interpreter's own scripts come first
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            MLFLOW_S3_ENDPOINT_URL=self.ctx.public_url(),
            AWS_ACCESS_KEY_ID=os.environ.get("AWS_ACCESS_KEY_ID", "salvia"),
            AWS_SECRET_ACCESS_KEY=os.environ.get("AWS_SECRET_ACCESS_KEY", "salvia"),
            AWS_DEFAULT_REGION=self.ctx.settings.region,
            PYTHONUNBUFFERED="1",
        )
        if self.ctx.role_credentials is not None and record.body.get("RoleArn"):
            env.update(self.ctx.role_credentials(record.body["RoleArn"], record.name))
        spec = InstanceSpec(
            job_name=record.name,
            host="mlflow",
            command=[
                *(sys.executable, "-m", "mlflow", "server", "--workers", "1"),
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}"),
                *("--artifacts-destination", record.body["ArtifactStoreUri"], "--serve-artifacts"),
            ],
            env=env,
            workdir=directory,
            log_path=directory / "server.log",
            mount_opt_ml=False,
        )
        return self.ctx.executor.start(spec).handle, port

    def _wait_healthy(self, handle: str, port: int, record: Record) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            status = self.ctx.executor.poll(handle)
            if status.state is not State.RUNNING:
                log_file = self.ctx.root / record.name / "server.log"
                tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() else ""
                raise RuntimeError(f"mlflow server exited ({status.exit_code}): {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.ctx.executor.stop(handle, grace_seconds=5)
        raise RuntimeError(f"mlflow server did not answer /health within {START_TIMEOUT:g} s")

    def _stop(self, name: str, then_delete: bool) -> None:
        record = self.ctx.store.get(KIND, name)
        if record is None:
            return
        self._set(name, TrackingServerStatus="Deleting" if then_delete else "Stopping")
        handle = record.body.get("_Handle")
        if handle:
            self.ctx.executor.stop(handle, grace_seconds=10)
        if then_delete:
            self.ctx.store.delete(KIND, name)
            shutil.rmtree(self.ctx.root / name, ignore_errors=True)
            return
        self._set(name, TrackingServerStatus="Stopped", IsActive="Inactive", _Handle=None)


def resolve_tracking_uri(store: MetadataStore, value: str) -> str:
    """`MLFLOW_TRACKING_URI` as a training job's script should see it: a tracking server's ARN
    becomes its URL; anything else stays as it is."""
    if not value.startswith("arn:") or ":mlflow-tracking-server/" not in value:
        return value
    record = store.get(KIND, value.rsplit("/", 1)[1])
    url = record.body.get("TrackingServerUrl") if record else None
    return str(url) if url else value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
