"""What only the local executor promises, beyond the shared contract: its state files guard
against pid reuse, an instance whose supervisor died is lost (and its command dies with it), and a
command that cannot be run ends with the shell's codes; its instance spec (whose environment may
hold credentials) is readable by its owner only."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from salvia.compute.executor import InstanceSpec, InstanceStatus, State
from salvia.compute.local import LocalProcessExecutor


def _spec(tmp_path: Path, command: list[str]) -> InstanceSpec:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return InstanceSpec(
        job_name="local-job",
        host="algo-1",
        command=command,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        workdir=workdir,
        log_path=tmp_path / "algo-1.log",
    )


def _wait(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _sleeper(tmp_path: Path) -> InstanceSpec:
    return _spec(tmp_path, [sys.executable, "-c", "print('ready', flush=True)\n"
                            "import time; time.sleep(600)"])  # fmt: skip


def test_a_dead_supervisor_means_lost_and_takes_its_command_along(tmp_path: Path) -> None:
    executor = LocalProcessExecutor(tmp_path / "state")
    spec = _sleeper(tmp_path)
    handle = executor.start(spec).handle
    _wait(lambda: "ready" in spec.log_path.read_text())
    record = json.loads((tmp_path / "state" / handle / "instance.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    _wait(lambda: executor.poll(handle).state is not State.RUNNING)
    assert executor.poll(handle) == InstanceStatus(State.LOST)
    _wait(lambda: not Path(f"/proc/{record['child_pid']}").exists()
          or "Z" in Path(f"/proc/{record['child_pid']}/stat").read_text().split()[2])  # fmt: skip
    assert executor.stop(handle, grace_seconds=0) == InstanceStatus(State.LOST)


def test_a_reused_pid_is_not_taken_for_the_instance(tmp_path: Path) -> None:
    executor = LocalProcessExecutor(tmp_path / "state")
    spec = _sleeper(tmp_path)
    handle = executor.start(spec).handle
    _wait(lambda: "ready" in spec.log_path.read_text())
    path = tmp_path / "state" / handle / "instance.json"
    real = json.loads(path.read_text())
    forged = dict(real, supervisor_start=real["supervisor_start"] + 1)
    path.write_text(json.dumps(forged))
    assert executor.poll(handle) == InstanceStatus(State.LOST)
    path.write_text(json.dumps(real))
    assert executor.stop(handle, grace_seconds=5) == InstanceStatus(State.EXITED, -signal.SIGTERM)


def test_a_command_that_cannot_run_exits_127(tmp_path: Path) -> None:
    executor = LocalProcessExecutor(tmp_path / "state")
    spec = _spec(tmp_path, [str(tmp_path / "no-such-program")])
    handle = executor.start(spec).handle
    _wait(lambda: executor.poll(handle).state is not State.RUNNING)
    assert executor.poll(handle) == InstanceStatus(State.EXITED, 127)
    assert "no-such-program" in spec.log_path.read_text()


def test_the_instance_spec_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    # its environment may carry an execution role's credentials grant
    executor = LocalProcessExecutor(tmp_path / "state")
    spec = _spec(tmp_path, [sys.executable, "-c", "pass"])
    handle = executor.start(spec).handle
    assert (tmp_path / "state" / handle / "spec.json").stat().st_mode & 0o777 == 0o600
    _wait(lambda: executor.poll(handle).state is not State.RUNNING)
