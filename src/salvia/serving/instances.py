"""An endpoint instance's model-server processes, the primitives real-time endpoints, batch
transform and serverless inference share: unpack a model's containers, start their model
servers through the Executor, wait for `/ping`, and the gateway's client of an instance.
"""

from __future__ import annotations

import functools
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salvia.algorithms import registry as algorithms
from salvia.clock import Clock
from salvia.compute.executor import Executor, InstanceSpec, State
from salvia.compute.runtimes import RuntimeRegistry
from salvia.config import Settings
from salvia.serving.client import InstanceClient, PipelineClient
from salvia.serving.metrics import InvocationMetrics
from salvia.serving.multi_model import CACHE_VARIABLE, ModelLibrary, MultiModelClient
from salvia.store.metadata import MetadataStore
from salvia.store.objects import ObjectStore

MODEL = "model"
# the inference framework of a runtime ("image") without a built-in algorithm
_FRAMEWORKS = {"sklearn": "sklearn", "xgboost": "xgboost", "pytorch": "pytorch"}


class DeployFailed(Exception):
    pass


@dataclass(frozen=True)
class ContainerSetup:
    """What one model-server process of an instance runs."""

    model_dir: Path
    env: dict[str, str]
    hostname: str = "container-1"
    direct: bool = False  # an inference pipeline invoked one container at a time
    multi_model: dict[str, Any] | None = None  # {Prefix, CacheEnabled} of a MultiModel container


Instance = InstanceClient | PipelineClient | MultiModelClient  # the gateway's handle on one


@dataclass
class ServingContext:
    settings: Settings
    store: MetadataStore
    objects: ObjectStore
    executor: Executor
    runtimes: RuntimeRegistry
    clock: Clock
    # authenticated mode: (role ARN, model name) -> the variables that give a model server its
    # ExecutionRoleArn's credentials and this server's address
    role_environment: Callable[[str, str], dict[str, str]] | None = None

    @property
    def endpoints_dir(self) -> Path:
        return self.settings.home / "endpoints"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _multi_model(container: dict[str, Any]) -> dict[str, Any] | None:
    if container.get("Mode") != "MultiModel":
        return None
    setting = (container.get("MultiModelConfig") or {}).get("ModelCacheSetting", "Enabled")
    return {"Prefix": container.get("ModelDataUrl", ""), "CacheEnabled": setting != "Disabled"}


class InstanceManager:
    """Starts, watches and stops instances. `EndpointEngine` is one (it sets `ctx`, `metrics`
    and the multi-model libraries); batch transform and serverless use it through the engine."""

    ctx: ServingContext
    metrics: InvocationMetrics
    _lock: threading.Lock
    _libraries: dict[str, ModelLibrary]

    def prepare_model(
        self,
        model_name: str,
        root: Path,
        extract: bool = True,
        environment: dict[str, str] | None = None,
    ) -> list[ContainerSetup]:
        """Each container's model directory (under `root`) and environment: one for a plain
        model, several for an inference pipeline (`Containers`), in calling order.
        `environment` adds to (and overrides) every container's."""
        model = self.ctx.store.get(MODEL, model_name)
        if model is None:
            raise DeployFailed(f"Model {model_name} does not exist.")
        primary = model.body.get("PrimaryContainer")
        containers = [primary] if primary else (model.body.get("Containers") or [{}])
        role = model.body.get("ExecutionRoleArn")
        if self.ctx.role_environment is not None and role:
            environment = {**self.ctx.role_environment(role, model_name), **(environment or {})}
        if environment:
            containers = [
                {**c, "Environment": {**(c.get("Environment") or {}), **environment}}
                for c in containers
            ]
        direct = (model.body.get("InferenceExecutionConfig") or {}).get("Mode") == "Direct"
        return [
            ContainerSetup(
                *self._container(root / ("model" if i == 0 else f"model-{i}"), container, extract),
                hostname=container.get("ContainerHostname") or f"container-{i + 1}",
                direct=direct,
                multi_model=_multi_model(container),
            )
            for i, container in enumerate(containers)
        ]

    def _container(
        self, directory: Path, container: dict[str, Any], extract: bool
    ) -> tuple[Path, dict[str, str]]:
        if extract and directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        url = container.get("ModelDataUrl")
        multi_model = container.get("Mode") == "MultiModel"
        if url and extract and not multi_model:  # a multi-model prefix loads per TargetModel
            with tempfile.TemporaryDirectory() as scratch:
                archive = Path(scratch) / "model.tar.gz"
                try:
                    archive.write_bytes(self.ctx.objects.read_bytes(url))
                    with tarfile.open(archive) as tar:
                        tar.extractall(directory, filter="data")
                except (OSError, tarfile.TarError) as error:
                    raise DeployFailed(f"Could not load the model data {url}: {error}") from None
        env = dict(container.get("Environment") or {})
        if multi_model:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        runtime = self.ctx.runtimes.resolve(container["Image"])
        spec = algorithms.for_runtime(runtime.name)
        if (
            spec is not None
            and "SAGEMAKER_PROGRAM" not in env
            and (not runtime.framework or not (directory / "code" / "inference.py").exists())
        ):
            env.setdefault("SALVIA_FRAMEWORK", f"algorithm:{spec.name}")
        else:
            env.setdefault("SALVIA_FRAMEWORK", _FRAMEWORKS.get(runtime.name, "python"))
        return directory, env

    def start_instance(
        self,
        owner: str,
        host: str,
        root: Path,
        containers: list[ContainerSetup],
        instance_type: Any,
    ) -> tuple[Instance, dict[str, Any]]:
        """One instance: a model server per container (several for a serial pipeline), its
        handle recorded as `{Handle, Port, Log}` of the first container plus, for a pipeline,
        `Containers` listing them all. It runs in the background: `wait_healthy` next."""
        import os
        import sys

        base = {k: os.environ[k] for k in ("PATH", "LANG", "HOME", "TMPDIR") if k in os.environ}
        processes = []
        for number, container in enumerate(containers):
            workdir = root if len(containers) == 1 else root / f"container-{number}"
            workdir.mkdir(parents=True, exist_ok=True)
            port = _free_port()
            # several workers: a port of each one's own too, for the client to spread over
            workers = int(container.env.get("SAGEMAKER_MODEL_SERVER_WORKERS") or 1)
            worker_ports = [_free_port() for _ in range(workers)] if workers > 1 else []
            command = [
                *(sys.executable, "-m", "salvia.serving.model_server"),
                *("--model-dir", str(container.model_dir), "--port", str(port)),
            ]
            if worker_ports:
                command += ["--worker-ports", ",".join(map(str, worker_ports))]
            spec = InstanceSpec(
                job_name=owner,
                host=host + (f"-{number}" if number else ""),
                command=command,
                env={**base, **container.env, "PYTHONUNBUFFERED": "1"},
                workdir=workdir,
                log_path=workdir / "server.log",
                vcpus=instance_type.vcpus_on_host,
                memory_mib=instance_type.memory_mib_on_host,
                mount_opt_ml=False,
            )
            handle = self.ctx.executor.start(spec)
            processes.append({"Handle": handle.handle, "Port": port, "Log": str(spec.log_path),
                              "Hostname": container.hostname})  # fmt: skip
            if worker_ports:
                processes[-1]["WorkerPorts"] = worker_ports
        instance = dict(processes[0])
        if containers[0].multi_model is not None:
            configured = containers[0].env.get(CACHE_VARIABLE)
            budget_mib = float(configured) if configured else instance_type.memory_mib_on_host / 2
            instance["MultiModel"] = {
                **containers[0].multi_model,
                "Directory": str(containers[0].model_dir),
                "BudgetBytes": int(budget_mib * 1024 * 1024),
                "Endpoint": owner,
                "Variant": host,
            }
        if len(processes) > 1:
            instance["Containers"] = processes
            instance["Mode"] = "Direct" if containers[0].direct else "Serial"
        return self._client(instance), instance

    def _client(self, instance: dict[str, Any]) -> Instance:
        processes = processes_of(instance)
        stages = [
            InstanceClient("127.0.0.1", p["Port"], worker_ports=p.get("WorkerPorts") or ())
            for p in processes
        ]
        multi = instance.get("MultiModel")
        if multi is not None:
            with self._lock:
                library = self._libraries.setdefault(
                    multi["Directory"],
                    ModelLibrary(self.ctx.objects, multi["Prefix"], Path(multi["Directory"])),
                )
            return MultiModelClient(
                stages[0],
                library,
                multi["BudgetBytes"],
                multi.get("CacheEnabled", True),
                functools.partial(self.metrics.model_event, multi["Endpoint"], multi["Variant"]),
            )
        if len(stages) == 1:
            return stages[0]
        hostnames = [p.get("Hostname") for p in processes]
        return PipelineClient(stages, hostnames, direct=instance.get("Mode") == "Direct")

    def stop_instance(self, instance: dict[str, Any], grace_seconds: float = 10) -> None:
        for process in processes_of(instance):
            self.ctx.executor.stop(process["Handle"], grace_seconds=grace_seconds)

    def wait_healthy(self, instance: dict[str, Any], timeout: float) -> None:
        """Every container of the instance must answer `/ping` with 200 in time."""
        deadline = time.monotonic() + timeout
        for process in processes_of(instance):
            try:
                self._wait_process(process, deadline, timeout)
            except DeployFailed:
                self.stop_instance(instance, grace_seconds=5)
                raise

    def _wait_process(self, process: dict[str, Any], deadline: float, timeout: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            status = self.ctx.executor.poll(process["Handle"])
            if status.state is not State.RUNNING:
                raise DeployFailed(
                    f"The model server exited ({status.exit_code}): {_tail(process['Log'])}"
                )
            try:
                url = f"http://127.0.0.1:{process['Port']}/ping"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                last = error.read().decode(errors="replace")[:800]
                if error.code != 503:  # 503 means still loading; anything else is final
                    raise DeployFailed(
                        f"The model server failed /ping ({error.code}): {last}"
                    ) from None
            except OSError:
                pass
            time.sleep(0.05)
        detail = last or _tail(process["Log"])
        raise DeployFailed(f"The model server did not pass /ping within {timeout} s: {detail}")


def processes_of(instance: dict[str, Any]) -> list[dict[str, Any]]:
    """The model-server processes of a recorded instance: one, or a pipeline's containers."""
    return instance.get("Containers") or [instance]


def _tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:800]
