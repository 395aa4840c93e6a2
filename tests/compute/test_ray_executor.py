"""What only the Ray executor promises, beyond the shared contract: a restarted server finds its
local cluster again by the address recorded in its state directory, an instance's actor ends with
the instance (freeing its CPUs) or with `stop`, a killed actor takes its command along, and a
cluster too busy for an instance makes `start` fail instead of hanging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from salvia.compute.executor import InstanceSpec, InstanceStatus, State

from .conftest import RayCluster

ray = pytest.importorskip("ray")

from salvia.compute.ray_executor import (  # noqa: E402 - only with ray installed
    CLUSTER_RECORD,
    NAMESPACE,
    RayExecutor,
)

SLEEPER = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"


@pytest.fixture
def executor(ray_cluster: RayCluster, tmp_path: Path) -> Iterator[RayExecutor]:
    made = RayExecutor(tmp_path / "state", address=ray_cluster.address)
    yield made
    made.close()


def _spec(tmp_path: Path, code: str, **options: object) -> InstanceSpec:
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    return InstanceSpec(
        job_name="ray-job",
        host="algo-1",
        command=[sys.executable, "-c", code],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        workdir=workdir,
        log_path=tmp_path / "algo-1.log",
        **options,  # type: ignore[arg-type]
    )


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _actor_exists(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _pid(log: Path) -> int:
    _wait(lambda: log.exists() and "pid" in log.read_text())
    return int(log.read_text().split("pid")[1].split()[0])


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"
    except OSError:
        return True


def test_a_restarted_server_reconnects_to_its_local_cluster(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    # The session's cluster is the local cluster of `ray_cluster.state_dir`: a new server process
    # on that state directory, given no address, must find it rather than start another.
    record = (ray_cluster.state_dir / CLUSTER_RECORD).read_text()
    first = RayExecutor(ray_cluster.state_dir)
    try:
        spec = _spec(tmp_path, SLEEPER)
        handle = first.start(spec).handle
        _pid(spec.log_path)
        restarted = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import json
                from pathlib import Path
                from salvia.compute.ray_executor import RayExecutor
                executor = RayExecutor(Path({str(ray_cluster.state_dir)!r}))
                running = executor.poll({handle!r})
                stopped = executor.stop({handle!r}, grace_seconds=5)
                executor.close()
                print(json.dumps([executor.address, running.state, stopped.exit_code]))
            """)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )  # fmt: skip
        address, running, exit_code = json.loads(restarted.stdout.splitlines()[-1])
        assert address == ray_cluster.address
        assert (running, exit_code) == ("running", -signal.SIGTERM)
        assert first.poll(handle) == InstanceStatus(State.EXITED, -signal.SIGTERM)
        assert (ray_cluster.state_dir / CLUSTER_RECORD).read_text() == record
    finally:
        first.close()


def test_the_actor_is_gone_after_stop(executor: RayExecutor, tmp_path: Path) -> None:
    spec = _spec(tmp_path, SLEEPER)
    handle = executor.start(spec).handle
    pid = _pid(spec.log_path)
    assert _actor_exists(handle)
    assert executor.stop(handle, grace_seconds=5) == InstanceStatus(State.EXITED, -signal.SIGTERM)
    _wait(lambda: not _actor_exists(handle))
    assert _gone(pid)
    assert executor.poll(handle) == InstanceStatus(State.EXITED, -signal.SIGTERM)


def test_the_actor_ends_with_its_instance(executor: RayExecutor, tmp_path: Path) -> None:
    handle = executor.start(_spec(tmp_path, "import sys; sys.exit(7)")).handle
    _wait(lambda: not _actor_exists(handle))  # nobody polled or stopped it
    assert executor.poll(handle) == InstanceStatus(State.EXITED, 7)
    assert executor.stop(handle) == InstanceStatus(State.EXITED, 7)


def test_a_killed_actor_is_lost_and_takes_its_command_along(
    executor: RayExecutor, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, SLEEPER)
    handle = executor.start(spec).handle
    pid = _pid(spec.log_path)
    ray.kill(ray.get_actor(handle, namespace=NAMESPACE))
    _wait(lambda: executor.poll(handle).state is not State.RUNNING)
    assert executor.poll(handle) == InstanceStatus(State.LOST)
    _wait(lambda: _gone(pid))
    assert executor.stop(handle, grace_seconds=0) == InstanceStatus(State.LOST)


def test_start_fails_when_the_cluster_has_no_room(ray_cluster: RayCluster, tmp_path: Path) -> None:
    executor = RayExecutor(tmp_path / "state", address=ray_cluster.address, start_timeout=2)
    spec = _spec(tmp_path, SLEEPER, vcpus=len(os.sched_getaffinity(0)))
    busy = executor.start(spec).handle
    try:
        _pid(spec.log_path)
        with pytest.raises(RuntimeError, match="did not start"):
            executor.start(_spec(tmp_path / "second", "print('never')"))
        # the actor that waited for room is not left behind
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert [n for n in names if n.startswith("salvia-ray-job-")] == [busy]
    finally:
        executor.stop(busy, grace_seconds=0)
        executor.close()
