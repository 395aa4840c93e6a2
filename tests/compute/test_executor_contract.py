"""The Executor contract (see `salvia.compute.executor`), run against every implementation.

To add an implementation, add one entry to `EXECUTORS`: a factory that builds a fresh executor
of that kind. The factory is called again for the re-attach test and must then return a *new*
executor that sees the same instances (same state directory, same cluster).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from salvia.compute.executor import (
    Executor,
    InstanceHandle,
    InstanceSpec,
    InstanceStatus,
    IsolationUnavailable,
    State,
)
from salvia.compute.local import LocalProcessExecutor

OPT_ML_UNAVAILABLE = "literal /opt/ml paths are unavailable on this host; use the SM_* variables"

ExecutorFactory = Callable[[pytest.FixtureRequest, Path], Executor]


def _ray_executor(request: pytest.FixtureRequest, state_dir: Path) -> Executor:
    pytest.importorskip("ray")
    from salvia.compute.ray_executor import RayExecutor

    return RayExecutor(state_dir, address=request.getfixturevalue("ray_cluster").address)


EXECUTORS: dict[str, ExecutorFactory] = {
    "local": lambda request, state_dir: LocalProcessExecutor(state_dir),
    "ray": _ray_executor,
}


@pytest.fixture(params=list(EXECUTORS))
def new_executor(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], Executor]]:
    """Builds executors of one kind that share their state (a restarted server's view)."""
    made: list[Executor] = []

    def make() -> Executor:
        made.append(EXECUTORS[request.param](request, tmp_path / "executor-state"))
        return made[-1]

    yield make
    for executor in made:
        executor.close()


class Instances:
    """Starts instances for one test and stops whatever is still running at its end."""

    def __init__(self, executor: Executor, root: Path) -> None:
        self.executor = executor
        self.root = root
        self.started: list[str] = []
        self.count = 0

    def spec(self, code: str, **options: object) -> InstanceSpec:
        n, self.count = self.count, self.count + 1
        workdir = self.root / f"work-{n}"
        workdir.mkdir(parents=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        env.update(options.pop("env", {}))  # type: ignore[call-overload]
        return InstanceSpec(
            job_name="contract-job",
            host=f"algo-{n + 1}",
            command=[sys.executable, "-c", textwrap.dedent(code)],
            env=env,
            workdir=workdir,
            log_path=self.root / "logs" / f"algo-{n + 1}.log",
            **options,  # type: ignore[arg-type]
        )

    def start(self, spec: InstanceSpec) -> InstanceHandle:
        handle = self.executor.start(spec)
        self.started.append(handle.handle)
        return handle

    def run(self, code: str, **options: object) -> tuple[InstanceStatus, str, InstanceHandle]:
        """Start `code`, wait for it to end, return (status, log, handle)."""
        spec = self.spec(code, **options)
        handle = self.start(spec)
        status = self.wait(handle.handle)
        return status, spec.log_path.read_text(), handle

    def wait(self, handle: str, timeout: float = 60.0) -> InstanceStatus:
        deadline = time.monotonic() + timeout
        while (status := self.executor.poll(handle)).state is State.RUNNING:
            assert time.monotonic() < deadline, f"instance {handle} still running"
            time.sleep(0.05)
        return status

    def cleanup(self) -> None:
        for handle in self.started:
            self.executor.stop(handle, grace_seconds=0)


def wait_for_line(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {log}"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.fixture
def executor(new_executor: Callable[[], Executor]) -> Executor:
    return new_executor()


@pytest.fixture
def instances(executor: Executor, tmp_path: Path) -> Iterator[Instances]:
    helper = Instances(executor, tmp_path / "instances")
    yield helper
    helper.cleanup()


LONG_RUNNING = """
    import sys, time
    print("ready", flush=True)
    time.sleep(600)
"""


class TestExecutorContract:
    def test_exit_code_zero_and_output_in_the_log(self, instances: Instances) -> None:
        status, log, _ = instances.run(
            """
            import sys
            print("to stdout", flush=True)
            print("to stderr", file=sys.stderr, flush=True)
            """
        )
        assert status == InstanceStatus(State.EXITED, 0)
        assert "to stdout" in log
        assert "to stderr" in log

    def test_nonzero_exit_code(self, instances: Instances) -> None:
        status, _, _ = instances.run("import sys; sys.exit(3)")
        assert status == InstanceStatus(State.EXITED, 3)

    def test_killed_by_a_signal_is_a_negative_code(self, instances: Instances) -> None:
        status, _, _ = instances.run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
        assert status == InstanceStatus(State.EXITED, -signal.SIGKILL)

    def test_log_is_appended_to(self, instances: Instances) -> None:
        spec = instances.spec("print('second')")
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        spec.log_path.write_text("first\n")
        instances.start(spec)
        assert instances.wait(instances.started[-1]).exit_code == 0
        lines = spec.log_path.read_text().splitlines()
        assert lines[0] == "first"
        assert "second" in lines

    def test_environment_is_exactly_the_specs_and_workdir_is_cwd(
        self, instances: Instances, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SALVIA_TEST_SERVER_ONLY", "leaked")
        status, log, _ = instances.run(
            """
            import json, os
            print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}))
            """,
            env={"TRAINING_JOB_NAME": "contract-job", "WITH SPACE": "a b=c"},
        )
        assert status.exit_code == 0
        seen = json.loads(log.strip().splitlines()[-1])
        assert seen["env"]["TRAINING_JOB_NAME"] == "contract-job"
        assert seen["env"]["WITH SPACE"] == "a b=c"
        assert "SALVIA_TEST_SERVER_ONLY" not in seen["env"]
        assert Path(seen["cwd"]).resolve() == (instances.root / "work-0").resolve()

    def test_stop_sends_sigterm_first(self, instances: Instances) -> None:
        spec = instances.spec(
            """
            import signal, sys, time
            def bye(signum, frame):
                print("graceful shutdown", flush=True)
                sys.exit(0)
            signal.signal(signal.SIGTERM, bye)
            print("ready", flush=True)
            time.sleep(600)
            """
        )
        handle = instances.start(spec).handle
        wait_for_line(spec.log_path, "ready")
        status = instances.executor.stop(handle, grace_seconds=30)
        assert status == InstanceStatus(State.EXITED, 0)
        assert "graceful shutdown" in spec.log_path.read_text()

    def test_stop_kills_what_ignores_sigterm_after_the_grace(self, instances: Instances) -> None:
        spec = instances.spec(
            """
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ready", flush=True)
            time.sleep(600)
            """
        )
        handle = instances.start(spec).handle
        wait_for_line(spec.log_path, "ready")
        began = time.monotonic()
        status = instances.executor.stop(handle, grace_seconds=1)
        assert status == InstanceStatus(State.EXITED, -signal.SIGKILL)
        assert time.monotonic() - began < 1 + 30  # generous: "returns once it has exited"

    def test_stop_ends_the_whole_process_tree(self, instances: Instances) -> None:
        spec = instances.spec(
            """
            import os, subprocess, sys, time
            sleeper = "import time; time.sleep(600)"
            same_group = subprocess.Popen([sys.executable, "-c", sleeper])
            own_session = subprocess.Popen([sys.executable, "-c", sleeper],
                                           start_new_session=True)
            print("pids", same_group.pid, own_session.pid, flush=True)
            time.sleep(600)
            """
        )
        handle = instances.start(spec).handle
        wait_for_line(spec.log_path, "pids")
        line = next(x for x in spec.log_path.read_text().splitlines() if x.startswith("pids"))
        pids = [int(p) for p in line.split()[1:]]
        assert instances.executor.stop(handle, grace_seconds=5).state is State.EXITED
        assert all(gone(pid) for pid in pids)

    def test_background_processes_end_with_the_main_one(self, instances: Instances) -> None:
        status, log, _ = instances.run(
            """
            import subprocess, sys
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            print("pid", child.pid, flush=True)
            """
        )
        assert status == InstanceStatus(State.EXITED, 0)
        pid = int(next(x for x in log.splitlines() if x.startswith("pid")).split()[1])
        assert gone(pid)

    def test_stop_is_idempotent_and_stopping_an_exited_instance_reports_it(
        self, instances: Instances
    ) -> None:
        spec = instances.spec(LONG_RUNNING)
        handle = instances.start(spec).handle
        wait_for_line(spec.log_path, "ready")
        first = instances.executor.stop(handle, grace_seconds=5)
        assert first == InstanceStatus(State.EXITED, -signal.SIGTERM)
        assert instances.executor.stop(handle, grace_seconds=5) == first
        assert instances.executor.poll(handle) == first

        done, _, finished = instances.run("import sys; sys.exit(3)")
        assert instances.executor.stop(finished.handle) == done == InstanceStatus(State.EXITED, 3)

    def test_a_new_executor_reattaches_to_a_running_instance(
        self, instances: Instances, new_executor: Callable[[], Executor]
    ) -> None:
        spec = instances.spec(LONG_RUNNING)
        handle = instances.start(spec).handle
        wait_for_line(spec.log_path, "ready")
        after_restart = new_executor()
        assert after_restart.poll(handle).state is State.RUNNING
        status = after_restart.stop(handle, grace_seconds=5)
        assert status == InstanceStatus(State.EXITED, -signal.SIGTERM)
        assert instances.executor.poll(handle) == status

    def test_an_unknown_handle_is_lost(self, executor: Executor) -> None:
        for handle in ("no-such-instance", "", "../../etc/passwd", "x" * 1000, "{}"):
            assert executor.poll(handle) == InstanceStatus(State.LOST)
            assert executor.stop(handle, grace_seconds=0) == InstanceStatus(State.LOST)

    def test_instances_started_from_many_threads(self, instances: Instances) -> None:
        specs = [instances.spec(f"print('instance {i}')") for i in range(4)]
        handles: dict[int, InstanceHandle] = {}

        def start(i: int) -> None:
            handles[i] = instances.executor.start(specs[i])

        threads = [threading.Thread(target=start, args=(i,)) for i in range(len(specs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        instances.started.extend(h.handle for h in handles.values())
        assert len({h.handle for h in handles.values()}) == len(specs)
        for i, spec in enumerate(specs):
            assert instances.wait(handles[i].handle) == InstanceStatus(State.EXITED, 0)
            assert f"instance {i}" in spec.log_path.read_text()

    def test_memory_limit(self, instances: Instances) -> None:
        allocate = """
            import sys
            block = bytearray({mib} * 1024 * 1024)
            print("allocated", len(block) // 2**20, flush=True)
        """
        fits, log, _ = instances.run(allocate.format(mib=16), memory_mib=256)
        assert fits == InstanceStatus(State.EXITED, 0)
        assert "allocated 16" in log
        too_much, log, _ = instances.run(allocate.format(mib=1024), memory_mib=256)
        assert too_much.state is State.EXITED
        assert too_much.exit_code != 0
        assert "allocated" not in log

    def test_vcpus_bound_the_cpus_and_the_thread_pools(self, instances: Instances) -> None:
        report = """
            import json, os
            names = ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                     "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"]
            print(json.dumps({"cpus": len(os.sched_getaffinity(0)),
                              "threads": [os.environ.get(n) for n in names]}))
        """
        host = len(os.sched_getaffinity(0))
        if host >= 2:
            status, log, _ = instances.run(report, vcpus=1)
            assert status.exit_code == 0
            assert json.loads(log.splitlines()[-1]) == {"cpus": 1, "threads": ["1"] * 5}
        status, log, _ = instances.run(report, vcpus=host + 8)
        assert json.loads(log.splitlines()[-1])["cpus"] == host
        status, log, _ = instances.run(report)
        assert json.loads(log.splitlines()[-1])["threads"] == [None] * 5

    def test_network_isolation_leaves_only_loopback(self, instances: Instances) -> None:
        probe = """
            import json, socket
            def reach(port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    return "connected"
                except OSError as error:
                    return type(error).__name__
            own = socket.create_server(("127.0.0.1", 0))
            print(json.dumps({"host": reach(PORT), "own": reach(own.getsockname()[1]),
                              "interfaces": sorted(n for _, n in socket.if_nameindex())}))
        """
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            code = probe.replace("PORT", str(port))
            open_status, open_log, _ = instances.run(code)
            try:
                status, log, _ = instances.run(code, network_isolation=True)
            except IsolationUnavailable as error:
                pytest.skip(f"this host cannot isolate the network: {error}")
        assert open_status.exit_code == 0
        assert json.loads(open_log.splitlines()[-1])["host"] == "connected"
        assert status.exit_code == 0
        seen = json.loads(log.splitlines()[-1])
        assert seen["host"] != "connected"
        assert seen["own"] == "connected"  # loopback is up inside
        assert seen["interfaces"] == ["lo"]

    def test_workdir_is_visible_at_opt_ml(self, instances: Instances) -> None:
        host_opt = sorted(os.listdir("/opt")) if os.path.isdir("/opt") else None
        host_has_opt_ml = os.path.lexists("/opt/ml")
        spec = instances.spec(
            """
            import json, os
            try:
                marker = open("/opt/ml/input/config/marker.txt").read()
            except OSError as error:
                marker = repr(error)
            opt = sorted(os.listdir("/opt")) if os.path.isdir("/opt") else None
            print(json.dumps({"marker": marker, "opt": opt}))
            """
        )
        (spec.workdir / "input" / "config").mkdir(parents=True)
        (spec.workdir / "input" / "config" / "marker.txt").write_text("this instance's /opt/ml")
        handle = instances.start(spec)
        assert instances.wait(handle.handle).exit_code == 0
        log = spec.log_path.read_text()
        if handle.opt_ml_mounted:
            seen = json.loads(log.splitlines()[-1])
            assert seen["marker"] == "this instance's /opt/ml"
            assert set(host_opt or []) <= set(seen["opt"])  # nothing under /opt was hidden
            assert OPT_ML_UNAVAILABLE not in log
        else:
            assert log.count(OPT_ML_UNAVAILABLE) == 1
        # the host itself is untouched
        assert os.path.lexists("/opt/ml") == host_has_opt_ml
        assert (sorted(os.listdir("/opt")) if os.path.isdir("/opt") else None) == host_opt

    def test_no_opt_ml_when_not_asked(self, instances: Instances) -> None:
        status, log, handle = instances.run("print('plain')", mount_opt_ml=False)
        assert status.exit_code == 0
        assert handle.opt_ml_mounted is False
        assert OPT_ML_UNAVAILABLE not in log
