"""`LocalProcessExecutor`: each instance is a local process tree under a small supervisor.

`start` launches `_supervise.py` (stdlib only), which detaches from the server, applies the
instance's isolation, runs the command in a process group of its own and records its exit code
in the instance's state directory (`<state_dir>/<handle>/`) whether or not the server is still
there. The handle names that directory; `instance.json` in it holds the supervisor's and the
command's pids with their start times from `/proc/<pid>/stat`, so a pid reused by another
process is never mistaken for the instance. Any executor on the same `state_dir` can poll and
stop any instance (re-attach after a restart).

Limits: `vcpus` pins the command to that many of the host's CPUs (all of them when it asks for
more than the host has) and sets OMP/MKL/OpenBLAS/NumExpr/vecLib thread counts to the same number
unless the instance's environment already sets them; `memory_mib` is an `RLIMIT_AS` on the
command (address space, so a program that reserves much more than it touches can hit it early).

Isolation (Linux): `network_isolation` runs the supervisor and command in a new network
namespace with only loopback, up; `mount_opt_ml` in a private mount namespace where the workdir
is bound at `/opt/ml` (when the host has no `/opt/ml`, a tmpfs covers `/opt` inside the namespace
and the host's `/opt` entries are bound back). As root the namespaces are created directly,
otherwise inside an unprivileged user namespace. When `/opt/ml` cannot be arranged the
instance still runs, `opt_ml_mounted` is False, and the supervisor writes one line to the log:
"literal /opt/ml paths are unavailable on this host; use the SM_* variables" (callers should not
repeat it). When network isolation cannot be arranged, `start` raises `IsolationUnavailable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from salvia.compute import _supervise
from salvia.compute.executor import (
    Executor,
    InstanceHandle,
    InstanceSpec,
    InstanceStatus,
    IsolationUnavailable,
    State,
)

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,250}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_POLL_INTERVAL = 0.05
_KILL_WAIT = 10.0  # after SIGKILL, how long the supervisor gets to reap and record


class LocalProcessExecutor(Executor):
    """Runs instances as local processes; state (handles, exit codes) lives under `state_dir`."""

    name = "local"

    def __init__(self, state_dir: Path, *, start_timeout: float = 30.0) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._next_cpu = 0

    # ---- start ---------------------------------------------------------------------------------

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        handle = "-".join(
            [_UNSAFE.sub("_", spec.job_name)[:120], _UNSAFE.sub("_", spec.host)[:40],
             uuid.uuid4().hex[:12]]
        )  # fmt: skip
        instance_dir = self.state_dir / handle
        instance_dir.mkdir(parents=True)
        cpus = self._assign_cpus(spec.vcpus)
        env = dict(spec.env)
        if cpus is not None:
            for name in THREAD_VARIABLES:
                env.setdefault(name, str(len(cpus)))
        config = {
            "command": list(spec.command),
            "env": env,
            "workdir": str(Path(spec.workdir).resolve()),
            "cpus": cpus,
            "memory_mib": spec.memory_mib,
            "mount_opt_ml": spec.mount_opt_ml,
            "network_isolation": spec.network_isolation,
        }
        # its environment may hold credentials (an execution role's grant): the owner's alone
        fd = os.open(instance_dir / "spec.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(config))
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)

        read_end, write_end = os.pipe()
        try:
            with spec.log_path.open("ab") as log:
                launcher = subprocess.Popen(
                    [sys.executable, "-I", _supervise.__file__, str(instance_dir), str(write_end)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(write_end,),
                    start_new_session=True,
                )
            os.close(write_end)
            write_end = -1
            launcher.wait()  # it forks the supervisor and exits at once
            reply = self._read_ready(read_end)
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        if reply is None:
            raise RuntimeError(
                f"the supervisor of {spec.job_name}/{spec.host} did not start; see {spec.log_path}"
            )
        if not reply.get("ok"):
            shutil.rmtree(instance_dir, ignore_errors=True)
            raise IsolationUnavailable(str(reply.get("message")))
        return InstanceHandle(handle=handle, opt_ml_mounted=bool(reply.get("opt_ml_mounted")))

    def _assign_cpus(self, vcpus: int | None) -> list[int] | None:
        """`vcpus` of the CPUs we may use, rotating the start so instances spread over the host."""
        if vcpus is None:
            return None
        available = sorted(os.sched_getaffinity(0))
        count = max(1, min(vcpus, len(available)))
        with self._lock:
            first = self._next_cpu % len(available)
            self._next_cpu += count
        return sorted(available[(first + i) % len(available)] for i in range(count))

    def _read_ready(self, fd: int) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.start_timeout
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            data += chunk
        reply: dict[str, Any] = json.loads(data.split(b"\n", 1)[0])
        return reply

    # ---- poll and stop -------------------------------------------------------------------------

    def poll(self, handle: str) -> InstanceStatus:
        record = self._record(handle)
        if record is None:
            return InstanceStatus(State.LOST)
        exited = self._exit_code(handle)
        if exited is not None:
            return exited
        if _alive(record["supervisor_pid"], record["supervisor_start"]):
            return InstanceStatus(State.RUNNING)
        # it may have recorded the code between our two looks
        return self._exit_code(handle) or InstanceStatus(State.LOST)

    def stop(self, handle: str, grace_seconds: float = 10.0) -> InstanceStatus:
        status = self.poll(handle)
        if status.state is not State.RUNNING:
            return status
        record = self._record(handle)
        if record is None:  # cannot happen after RUNNING, but a handle is only a string
            return InstanceStatus(State.LOST)
        self._signal_command(record, signal.SIGTERM)
        status = self._wait(handle, grace_seconds)
        if status.state is State.RUNNING:
            self._signal_command(record, signal.SIGKILL)
            status = self._wait(handle, _KILL_WAIT)
        if status.state is State.RUNNING and _alive(
            record["supervisor_pid"], record["supervisor_start"]
        ):
            # a supervisor that does not finish is killed too; its command dies with it
            os.kill(record["supervisor_pid"], signal.SIGKILL)
            status = self._wait(handle, _KILL_WAIT)
        return status

    def _signal_command(self, record: dict[str, Any], signum: int) -> None:
        pid = record.get("child_pid")
        if pid is not None and _alive(pid, record.get("child_start")):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signum)
        elif signum == signal.SIGTERM and _alive(
            record["supervisor_pid"], record["supervisor_start"]
        ):
            os.kill(record["supervisor_pid"], signum)  # it forwards to whatever group is left

    def _wait(self, handle: str, seconds: float) -> InstanceStatus:
        deadline = time.monotonic() + seconds
        while True:
            status = self.poll(handle)
            if status.state is not State.RUNNING or time.monotonic() >= deadline:
                return status
            time.sleep(_POLL_INTERVAL)

    # ---- state files ---------------------------------------------------------------------------

    def _record(self, handle: str) -> dict[str, Any] | None:
        if not _HANDLE.fullmatch(handle):
            return None
        try:
            record: dict[str, Any] = json.loads(
                (self.state_dir / handle / "instance.json").read_text()
            )
        except (OSError, ValueError):
            return None
        return record

    def _exit_code(self, handle: str) -> InstanceStatus | None:
        try:
            text = (self.state_dir / handle / "exit_code").read_text()
        except OSError:
            return None
        return InstanceStatus(State.EXITED, int(text))


def _alive(pid: int, started: int | None) -> bool:
    """Whether `pid` is still the process that started at `started` (and not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return fields[0] not in ("Z", "X") and int(fields[19]) == started
