"""The `Executor` interface: start, poll and stop one job *instance* (one SageMaker host).

An instance is one process tree running `InstanceSpec.command` in its own working directory,
which is the instance's `/opt/ml`. The training engine prepares that directory (config files,
channels, code) before `start` and collects from it after the instance has exited; the executor
only runs the process, applies the instance's limits and isolation, and reports how it ended.

Contract, shared by every implementation and checked by `tests/compute/test_executor_contract.py`:
- `start` returns an opaque handle (a string) that survives a restart of the server: a new
  executor of the same kind, given the handle, can `poll` and `stop` the instance as long as its
  process still runs (re-attach). `poll` answers `lost` for a handle whose process is gone
  without a recorded exit code.
- The process's stdout and stderr are appended to `InstanceSpec.log_path`.
- `stop` sends SIGTERM, waits up to `grace_seconds`, then kills the whole process tree; it is
  idempotent and returns once the instance has exited.
- Limits: `vcpus` bounds the CPUs the instance may use and the threads its numerical libraries
  start (OMP/MKL/OpenBLAS); `memory_mib` bounds its address space.
- `network_isolation=True` runs the instance without any network interface but loopback; when
  that cannot be arranged, `start` raises `IsolationUnavailable` and nothing runs.
- `mount_opt_ml=True` makes the working directory visible at the literal path `/opt/ml` inside
  the instance where the OS allows a private mount namespace; `InstanceHandle.opt_ml_mounted`
  says whether it could.
- Thread-safe: one executor serves every job of the server.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class IsolationUnavailable(RuntimeError):
    """Network isolation was asked for and this host cannot provide it."""


@dataclass(frozen=True)
class InstanceSpec:
    job_name: str
    host: str  # "algo-1", "algo-2", ...
    command: list[str]
    env: dict[str, str]  # the process's whole environment
    workdir: Path  # the instance's /opt/ml on the host
    log_path: Path
    vcpus: int | None = None
    memory_mib: int | None = None
    mount_opt_ml: bool = True
    network_isolation: bool = False
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceHandle:
    handle: str  # opaque; persist it to re-attach after a restart
    opt_ml_mounted: bool


class State(StrEnum):
    RUNNING = "running"
    EXITED = "exited"
    LOST = "lost"  # the process is gone and its exit code is unknown


@dataclass(frozen=True)
class InstanceStatus:
    state: State
    exit_code: int | None = None  # set when EXITED; negative for "killed by signal N"


class Executor(abc.ABC):
    """Runs job instances. See the module docstring for the contract."""

    name: str = "executor"

    @abc.abstractmethod
    def start(self, spec: InstanceSpec) -> InstanceHandle: ...

    @abc.abstractmethod
    def poll(self, handle: str) -> InstanceStatus: ...

    @abc.abstractmethod
    def stop(self, handle: str, grace_seconds: float = 10.0) -> InstanceStatus: ...

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release the executor's own resources; running instances are left running."""
