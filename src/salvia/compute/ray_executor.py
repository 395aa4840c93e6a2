"""`RayExecutor`: each instance is a detached, named Ray actor that supervises one local process.

The actor (`_InstanceActor`) holds a `LocalProcessExecutor` whose state directory is on the node
where the actor landed, and delegates start, poll and stop to it: namespaces, limits, log capture
and exit-code recording are the local executor's, unchanged. The handle is the actor's name, so
any `RayExecutor` connected to the same cluster finds the instance with `ray.get_actor` (re-attach
after a server restart). Actors live in the Ray namespace "salvia".

Resources: the actor asks for `spec.vcpus` CPUs (1 when unset), capped to the CPUs of the
cluster's biggest node, so an instance that asks for more than any node has still runs (on all of
that node's CPUs, as the local executor does) instead of waiting forever to be scheduled. While
the cluster is busy, `start` waits for free CPUs up to `start_timeout` and then fails. Memory is
not reserved with Ray (`memory_mib` is only the instance's address-space limit, as locally).

Ending: when the command exits, the actor writes the exit code to a small detached ledger actor
(`_ExitLedger`, on the head node) and exits, which frees its CPUs; `poll` and `stop` of an instance
whose actor is gone answer from the ledger, and `lost` when it has no entry (the actor died, or
the cluster was restarted). `stop` stops the process tree through the actor, then kills the actor.
If the actor dies first (`ray.kill`, a crash), a small keeper process ends the command with it.

The cluster: with an `address`, the executor connects to that cluster. Without one it uses a
local single-node cluster of its own that outlives the server: it runs `ray start --head --block`
as a detached process (no dashboard, a 100 MB object store, this machine's CPUs, free ports) and
records its address in `<state_dir>/ray-cluster.json`; a restarted server on the same
`state_dir` reconnects to it there, and starts a new one only when that one is gone (its instances
are then lost, as they would be). `stop_local_cluster(state_dir)` ends it. Ray's own files go to a
short directory under the system temp dir, because Ray's socket paths must stay short.

Requirements of a multi-node cluster: every node has Salvia installed (the actor's code), and the
instances' `workdir` and `log_path` are on a file system that the server and every node share,
since the actor's node writes them. `close()` disconnects this process from Ray; instances and
clusters keep running. Ray's driver connection is per process, so executors in one process share
it and the last one to close disconnects (never a connection that someone else made).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from salvia.compute._supervise import start_time
from salvia.compute.executor import (
    Executor,
    InstanceHandle,
    InstanceSpec,
    InstanceStatus,
    IsolationUnavailable,
    State,
)
from salvia.compute.local import LocalProcessExecutor

NAMESPACE = "salvia"
LEDGER_NAME = "salvia-exit-ledger"
CLUSTER_RECORD = "ray-cluster.json"
_HANDLE = re.compile(r"salvia-[A-Za-z0-9._-]{1,240}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CALL_TIMEOUT = 60.0  # an answer from an actor's node slower than this is a failure
_WATCH_INTERVAL = 0.2
_OBJECT_STORE_BYTES = 100 * 1000 * 1000
_CLUSTER_START_TIMEOUT = 120.0
_CLUSTER_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # one node: draining it on SIGTERM (30 s by default) would only delay `stop_local_cluster`
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
}
# The supervisor is detached from the actor's worker process, so it would outlive the actor. The
# keeper waits on a pipe whose write end only the actor holds; when the actor's process ends
# (exit, `ray.kill`, a crash, the node's raylet going away) and the instance has not recorded an
# exit code, it kills the command's process group and the supervisor: a lost instance leaves
# nothing running, as with the local executor.
_KEEPER = """
import json, os, signal, sys
fd, instance_dir = int(sys.argv[1]), sys.argv[2]
if os.fork():
    os._exit(0)  # not the worker's child: Ray kills a worker's children when it exits
while os.read(fd, 1):
    pass
def started(pid):
    try:
        return int(open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None
if not os.path.exists(os.path.join(instance_dir, "exit_code")):
    record = json.load(open(os.path.join(instance_dir, "instance.json")))
    child = record.get("child_pid")
    if child is not None and started(child) == record.get("child_start"):
        try:
            os.killpg(child, signal.SIGKILL)
        except OSError:
            pass
    if started(record["supervisor_pid"]) == record["supervisor_start"]:
        os.kill(record["supervisor_pid"], signal.SIGKILL)
"""
_DETACH = """
import subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=sys.stderr,
                         start_new_session=True)
print(child.pid)
"""


# ---- the actors (run on the cluster's nodes) ------------------------------------------------


class _InstanceActor:
    """One instance: a `LocalProcessExecutor` instance on this node, watched until it exits."""

    def __init__(self, name: str, state_dir: str) -> None:
        self.name = name
        self.local = LocalProcessExecutor(Path(state_dir))
        # Each actor has an executor of its own; start its CPU rotation anywhere, so that
        # one-CPU instances on one node do not all pin CPU 0.
        self.local._next_cpu = random.randrange(os.cpu_count() or 1)
        self.handle: str | None = None

    def start(self, spec: InstanceSpec) -> dict[str, Any]:
        try:
            started = self.local.start(spec)
        except IsolationUnavailable as error:
            return {"isolation": str(error)}
        self.handle = started.handle
        self._keep(self.local.state_dir / started.handle)
        import ray

        ray.get_runtime_context().current_actor.watch.remote()
        return {"opt_ml_mounted": started.opt_ml_mounted}

    def _keep(self, instance_dir: Path) -> None:
        """Start the keeper, which ends the instance if this actor dies before it is recorded."""
        read_end, self._lifeline = os.pipe()  # we hold the only write end; our death closes it
        try:
            subprocess.run(
                [sys.executable, "-I", "-c", _KEEPER, str(read_end), str(instance_dir)],
                stdin=subprocess.DEVNULL,
                pass_fds=(read_end,),
                start_new_session=True,  # not in this worker's process group, which Ray kills
                check=True,
            )
        finally:
            os.close(read_end)

    def poll(self) -> InstanceStatus:
        if self.handle is None:
            return InstanceStatus(State.LOST)
        return self.local.poll(self.handle)

    def stop(self, grace_seconds: float) -> InstanceStatus:
        if self.handle is None:
            return InstanceStatus(State.LOST)
        status = self.local.stop(self.handle, grace_seconds)
        self._record(status)
        return status

    def watch(self) -> None:
        """Wait for the command to end, record how, and exit (which frees the actor's CPUs)."""
        assert self.handle is not None
        while (status := self.local.poll(self.handle)).state is State.RUNNING:
            time.sleep(_WATCH_INTERVAL)
        self._record(status)
        import ray

        ray.actor.exit_actor()

    def _record(self, status: InstanceStatus) -> None:
        if status.state is State.EXITED:
            import ray

            ledger = ray.get_actor(LEDGER_NAME, namespace=NAMESPACE)
            ray.get(ledger.record.remote(self.name, status.exit_code), timeout=_CALL_TIMEOUT)


class _ExitLedger:
    """Exit codes of instances whose actors have ended, for as long as the cluster runs."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def record(self, name: str, exit_code: int) -> None:
        self.codes[name] = exit_code

    def get(self, name: str) -> int | None:
        return self.codes.get(name)


# ---- the executor (runs in the server) --------------------------------------------------------


class RayExecutor(Executor):
    """Runs instances as detached Ray actors; see the module docstring."""

    name = "ray"

    def __init__(
        self, state_dir: Path, *, address: str | None = None, start_timeout: float = 120.0
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.address = address or local_cluster(self.state_dir)
        # where the actors' local executors keep their state, on whichever node they run
        self._instances_dir = str((self.state_dir / "instances").resolve())
        _connection.acquire(self.address)
        self._closed = False
        self._close_lock = threading.Lock()
        import ray

        self._ray: Any = ray  # ray's own annotations do not describe its remote handles
        self._actor_class: Any = ray.remote(_InstanceActor)
        self._ledger: Any = (
            ray.remote(_ExitLedger)
            .options(
                name=LEDGER_NAME,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                resources={"node:__internal_head__": 0.001},
            )
            .remote()
        )

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        ray = self._ray
        name = "-".join(
            ["salvia", _UNSAFE.sub("_", spec.job_name)[:120], _UNSAFE.sub("_", spec.host)[:40],
             uuid.uuid4().hex[:12]]
        )  # fmt: skip
        cpus = self._cpus(spec.vcpus)
        actor = self._actor_class.options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=cpus,
            max_concurrency=4,  # watch, poll and stop run side by side
            max_restarts=0,
        ).remote(name, self._instances_dir)
        try:
            reply = ray.get(actor.start.remote(spec), timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise RuntimeError(
                f"{spec.job_name}/{spec.host} did not start on the Ray cluster at {self.address} "
                f"within {self.start_timeout:g} s (it needs {cpus} free CPUs on one node)"
            ) from None
        except ray.exceptions.RayError as error:
            ray.kill(actor)
            raise RuntimeError(f"{spec.job_name}/{spec.host} could not start: {error}") from error
        if "isolation" in reply:
            ray.kill(actor)
            raise IsolationUnavailable(reply["isolation"])
        return InstanceHandle(handle=name, opt_ml_mounted=bool(reply["opt_ml_mounted"]))

    def poll(self, handle: str) -> InstanceStatus:
        actor = self._actor(handle)
        if actor is None:
            return self._recorded(handle)
        try:
            status: InstanceStatus = self._ray.get(actor.poll.remote(), timeout=_CALL_TIMEOUT)
        except self._ray.exceptions.RayActorError:
            return self._recorded(handle)
        return status

    def stop(self, handle: str, grace_seconds: float = 10.0) -> InstanceStatus:
        ray = self._ray
        actor = self._actor(handle)
        if actor is None:
            return self._recorded(handle)
        try:
            status: InstanceStatus = ray.get(
                actor.stop.remote(grace_seconds), timeout=grace_seconds + _CALL_TIMEOUT
            )
        except ray.exceptions.RayActorError:  # it ended (and recorded its code) while we asked
            return self._recorded(handle)
        if status.state is not State.RUNNING:
            ray.kill(actor)  # the exit is recorded in the ledger by now
        return status

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _connection.release()

    # ---- helpers -------------------------------------------------------------------------------

    def _actor(self, handle: str) -> Any:
        if not _HANDLE.fullmatch(handle):
            return None
        try:
            return self._ray.get_actor(handle, namespace=NAMESPACE)
        except ValueError:  # no live actor of that name
            return None

    def _recorded(self, handle: str) -> InstanceStatus:
        if not _HANDLE.fullmatch(handle):
            return InstanceStatus(State.LOST)
        code = self._ray.get(self._ledger.get.remote(handle), timeout=_CALL_TIMEOUT)
        return InstanceStatus(State.LOST) if code is None else InstanceStatus(State.EXITED, code)

    def _cpus(self, vcpus: int | None) -> int:
        biggest = max(
            (int(node["Resources"].get("CPU", 0)) for node in self._ray.nodes() if node["Alive"]),
            default=0,
        )
        return min(vcpus or 1, biggest)


# ---- the process's connection to Ray ----------------------------------------------------------


class _Connection:
    """Ray's driver connection is per process: executors share it, the last one disconnects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._owned = False

    def acquire(self, address: str) -> None:
        import ray

        with self._lock:
            if self._users == 0 and not ray.is_initialized():
                ray.init(
                    address=address,
                    namespace=NAMESPACE,
                    logging_level=logging.WARNING,
                    log_to_driver=False,  # instances' output goes to their log files
                )
                self._owned = True
            elif ray.is_initialized():
                connected = ray.get_runtime_context().gcs_address
                if _port(connected) != _port(address):
                    raise RuntimeError(
                        f"this process is already connected to the Ray cluster at {connected}, "
                        f"not {address}"
                    )
            self._users += 1

    def release(self) -> None:
        import ray

        with self._lock:
            self._users -= 1
            if self._users == 0 and self._owned:
                ray.shutdown()
                self._owned = False


def _port(address: str) -> str:
    return address.rpartition(":")[2]


_connection = _Connection()


# ---- the local cluster ------------------------------------------------------------------------


def local_cluster(state_dir: Path) -> str:
    """The address of `state_dir`'s own local cluster, started when it is not running."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        record = _running_cluster(state_dir)
        if record is None:
            record = _start_cluster(state_dir)
        return str(record["address"])


def stop_local_cluster(state_dir: Path, timeout: float = 60.0) -> bool:
    """End the local cluster that `local_cluster(state_dir)` started; False if none ran."""
    with _locked(state_dir):
        record = _running_cluster(state_dir)
        (state_dir / CLUSTER_RECORD).unlink(missing_ok=True)
        if record is None:
            return False
        # `ray start --block` ends the processes it started when it is terminated
        os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(record["pid"], record["pid_start"]):
            if time.monotonic() > deadline:
                os.killpg(record["pid"], signal.SIGKILL)
                break
            time.sleep(0.1)
        shutil.rmtree(record["temp_dir"], ignore_errors=True)  # Ray's session files and sockets
        return True


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with (state_dir / "ray-cluster.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _running_cluster(state_dir: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((state_dir / CLUSTER_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not _alive(record["pid"], record["pid_start"]):
        return None
    host, _, port = record["address"].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError:
        return None
    return record


def _start_cluster(state_dir: Path) -> dict[str, Any]:
    key = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    temp_dir = Path(tempfile.gettempdir()) / f"salvia-ray-{key}"
    temp_dir.mkdir(parents=True, exist_ok=True)
    (temp_dir / "ray_current_cluster").unlink(missing_ok=True)
    log_path = state_dir / "ray-cluster.log"
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
        f"--port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        f"--temp-dir={temp_dir}", f"--num-cpus={len(os.sched_getaffinity(0))}",
        f"--object-store-memory={_OBJECT_STORE_BYTES}", "--include-dashboard=false",
        "--disable-usage-stats", "--log-style=record",
    ]  # fmt: skip
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        # started through a short-lived launcher, so that it is nobody's child: it outlives the
        # server, and no process object of ours is left waiting for it
        launcher = subprocess.run(
            [sys.executable, "-I", "-c", _DETACH, *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **_CLUSTER_ENV},
            check=True,
        )
    pid = int(launcher.stdout)
    address_file = temp_dir / "ray_current_cluster"
    deadline = time.monotonic() + _CLUSTER_START_TIMEOUT
    while True:
        with log_path.open("rb") as log:
            log.seek(offset)
            if b"Ray runtime started" in log.read() and address_file.exists():
                break
        if start_time(pid) is None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            raise RuntimeError(f"the local Ray cluster did not start; see {log_path}")
        time.sleep(0.1)
    record = {
        "address": address_file.read_text().strip(),
        "pid": pid,
        "pid_start": start_time(pid),
        "temp_dir": str(temp_dir),
    }
    tmp = state_dir / (CLUSTER_RECORD + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, state_dir / CLUSTER_RECORD)
    return record


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int, started: int | None) -> bool:
    return started is not None and start_time(pid) == started
