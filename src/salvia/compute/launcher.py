"""The in-instance bootstrap: what `train` is in a SageMaker training container.

Run by the executor as `python -m salvia.compute.launcher <instance_root> <log_events_path>`
after the engine has laid out `<instance_root>` (`contract.write_config`, channels, code, and
the marker `contract.INSTANCE_MARKER`). It

1. decides the base directory the script sees: `/opt/ml` when `/opt/ml/<INSTANCE_MARKER>` holds
   this instance's token (the executor mounted the instance root there), else the instance root;
2. reads `input/config/*.json` and builds the SM_* environment (`contract.training_env`);
3. installs `code/requirements.txt` into a cached virtual environment keyed by the file's
   sha256 (and a package with `setup.py` into a per-instance one);
4. runs the script (`contract.script_command`) in `code/`, pumping each line of its stdout and
   stderr into the log events file (`salvia.logfile`) and onto its own stdout;
5. forwards SIGTERM, SIGINT and SIGHUP to the script, writes `output/success` when the script
   exits 0, `output/failure` (unless the script wrote one) when it does not or when the launcher
   itself fails, and ends the way the script ended (same exit code, or the same signal).

Environment the engine prepares with `contract.launcher_environment`, besides the job's own
`Environment` and the AWS endpoint variables (no `SALVIA_*` variable reaches the script):

    SALVIA_JOB_NAME              the training job's name (required)
    SALVIA_JOB_ARN               its ARN (required)
    SALVIA_JOB_REGION            the region (required)
    SALVIA_INSTANCE_HOST         this host, "algo-1"; checked against resourceconfig.json
    SALVIA_INSTANCE_HOSTS        JSON list of all hosts (informational: resourceconfig.json rules)
    SALVIA_INSTANCE_TYPE         the instance type (informational, likewise)
    SALVIA_INSTANCE_VCPUS        vCPUs, SM_NUM_CPUS (default: os.cpu_count())
    SALVIA_INSTANCE_GPUS         GPUs, SM_NUM_GPUS (default 0)
    SALVIA_HOST_ADDRESSES        JSON {"algo-1": "127.0.0.1", ...}: where each host is reachable
    SALVIA_MASTER_PORT           MASTER_PORT for torch.distributed (default 7777)
    SALVIA_PYTHON                the runtime's interpreter (default: this interpreter)
    SALVIA_ENTRY_POINT           the script (default: SAGEMAKER_PROGRAM, then the
                                 `sagemaker_program` hyperparameter)
    SALVIA_TRAINING_MODULE       `pkg.mod:func` called when there is no script (algorithm mode;
                                 default: SAGEMAKER_TRAINING_MODULE)
    SALVIA_CONTAINER_ENTRYPOINT  JSON list: AlgorithmSpecification.ContainerEntrypoint, run
    SALVIA_CONTAINER_ARGUMENTS   instead of the script, followed by ContainerArguments (or the
                                 arguments alone, as they replace the image's `train`); a
                                 leading `python`/`python3` is the runtime's interpreter and
                                 `/opt/ml/...` arguments follow the base directory
    SALVIA_ENVS_DIR              where requirements environments are cached
                                 (default: <instance_root>/.salvia/envs, i.e. not shared)
    SALVIA_ATTEMPT               the engine's attempt number (logged only)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from salvia import logfile
from salvia.compute import contract
from salvia.errors import ValidationException

__all__ = ["LauncherError", "main", "requirements_env"]

_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_MAX_LINE = 256 * 1024  # a longer line is logged in pieces
_STDERR_TAIL = 40
_PUMP_DRAIN_SECONDS = 5.0
_UNMOUNTED = "literal /opt/ml paths are unavailable on this host; use the SM_* variables"
_COMPLETE = ".salvia-complete"
_PIP_INSTALL = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input")
_PYTHON_ERRORS = ("Error", "Exception", "Traceback", "KeyboardInterrupt", "SystemExit")

# runs pip: (command, cwd) -> exit status
_PipRunner = Callable[[list[str], Path], int]


class LauncherError(Exception):
    """The launcher could not start the script; the message goes to `output/failure`."""


class _Log:
    """Writes job log events and echoes them on stdout; shared by the pump threads."""

    def __init__(self, events: IO[bytes]) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._echo = True

    def line(self, message: str, raw: bytes | None = None) -> None:
        with self._lock:
            logfile.append(self._events, message)
            if self._echo:
                try:
                    out = sys.stdout.buffer
                    out.write(
                        raw if raw is not None else message.encode("utf-8", "replace") + b"\n"
                    )
                    out.flush()
                except (OSError, ValueError):
                    self._echo = False  # stdout is gone; the events file is what counts


class _Launcher:
    def __init__(self, root: Path, log: _Log, env: Mapping[str, str]) -> None:
        self.root = root
        self.log = log
        self.env = env
        self.child: subprocess.Popen[bytes] | None = None
        self.stop_signal: int | None = None
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)

    # -- signals ----------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in _FORWARDED_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signal = signum
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> int:
        """The exit status: >= 0 an exit code, < 0 "ended by signal -status"."""
        base = self._base_dir()
        config = self.root / "input" / "config"
        hyperparameters = _read_json(config / "hyperparameters.json")
        input_data_config = _read_json(config / "inputdataconfig.json")
        resource_config = _read_json(config / "resourceconfig.json")
        _, own = contract.split_hyperparameters(hyperparameters)
        framework_params = contract.framework_parameters(hyperparameters)
        host = self.env.get(contract.ENV_INSTANCE_HOST)
        if host and host != resource_config.get("current_host"):
            raise LauncherError(
                f"ClientError: instance {self.root} is {resource_config.get('current_host')!r} "
                f"in resourceconfig.json but {host!r} in {contract.ENV_INSTANCE_HOST}"
            )
        entry_point = (
            self.env.get(contract.ENV_ENTRY_POINT)
            or self.env.get("SAGEMAKER_PROGRAM")
            or (str(own["sagemaker_program"]) if own.get("sagemaker_program") else None)
        )
        training_module = self.env.get(contract.ENV_TRAINING_MODULE) or self.env.get(
            "SAGEMAKER_TRAINING_MODULE"
        )
        container_command = [
            *json.loads(self.env.get(contract.ENV_CONTAINER_ENTRYPOINT) or "[]"),
            *json.loads(self.env.get(contract.ENV_CONTAINER_ARGUMENTS) or "[]"),
        ]
        python = self.env.get(contract.ENV_PYTHON) or sys.executable
        num_gpus = int(self.env.get(contract.ENV_GPUS) or 0)
        addresses = json.loads(self.env.get(contract.ENV_HOST_ADDRESSES) or "{}")
        master_port = int(self.env.get(contract.ENV_MASTER_PORT) or contract.DEFAULT_MASTER_PORT)
        inherited_path = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sm_env = contract.training_env(
            base,
            hyperparameters=hyperparameters,
            input_data_config=input_data_config,
            resource_config=resource_config,
            job_name=_required(self.env, contract.ENV_JOB_NAME),
            job_arn=_required(self.env, contract.ENV_JOB_ARN),
            region=_required(self.env, contract.ENV_JOB_REGION),
            num_cpus=int(self.env.get(contract.ENV_VCPUS) or os.cpu_count() or 1),
            num_gpus=num_gpus,
            host_addresses=addresses,
            master_port=master_port,
            entry_point=entry_point,
            framework_module=None if entry_point else training_module,
            python_path=inherited_path,
        )
        env = {k: v for k, v in self.env.items() if not k.startswith("SALVIA_")}
        env.update(sm_env)
        env.setdefault("AWS_DEFAULT_REGION", sm_env["AWS_REGION"])
        # What SageMaker's framework images set in their Dockerfiles: lines reach the log as
        # they are printed, and no __pycache__ lands in code/.
        env.setdefault("PYTHONUNBUFFERED", "TRUE")
        env.setdefault("PYTHONDONTWRITEBYTECODE", "TRUE")
        if attempt := self.env.get(contract.ENV_ATTEMPT):
            self.log.line(f"Attempt {attempt} of job {sm_env['TRAINING_JOB_NAME']}")

        code_dir = self.root / "code"
        cwd = os.path.join(base, "code")
        if container_command:
            command = _container_command(container_command, python, base)
        elif entry_point:
            python = self._prepare_python(python, code_dir, env)
            if self.stop_signal is not None:
                return -self.stop_signal
            hosts = list(resource_config["hosts"])
            torchrun = _torchrun(framework_params, hosts, sm_env, num_gpus, master_port)
            command = self._script(code_dir, entry_point, hyperparameters, python, torchrun)
        elif training_module:
            module, _, func = training_module.partition(":")
            call = f"import importlib; importlib.import_module({module!r}).{func or 'main'}()"
            command = [python, "-c", call]
        else:
            raise LauncherError(
                "ClientError: no entry point: set the sagemaker_program hyperparameter "
                "(the SDK's entry_point) to the script to run."
            )
        self.log.line("Invoking script with the following command:")
        self.log.line(shlex.join(command))
        return self._run_child(command, env, cwd, capture_errors=True)

    def _base_dir(self) -> str:
        token = contract.read_instance_marker(self.root)
        if token is not None and contract.read_instance_marker(contract.OPT_ML) == token:
            return contract.OPT_ML
        self.log.line(_UNMOUNTED)
        return str(self.root)

    def _script(
        self,
        code_dir: Path,
        entry_point: str,
        hyperparameters: Mapping[str, str],
        python: str,
        torchrun: contract.TorchRun | None,
    ) -> list[str]:
        entry = code_dir / entry_point
        if not entry.is_file():
            raise LauncherError(
                f"ClientError: entry point {entry_point!r} (sagemaker_program) was not found in "
                "the code directory; check entry_point and source_dir."
            )
        try:
            command = contract.script_command(
                code_dir, entry_point, contract.user_args(hyperparameters), python, torchrun
            )
        except ValidationException as exc:
            raise LauncherError(f"ClientError: {exc.message}") from exc
        if command[0] == "/bin/sh":
            entry.chmod(entry.stat().st_mode | 0o111)  # TTK makes a command entry executable
        return command

    # -- requirements -----------------------------------------------------------------------
    def _prepare_python(self, python: str, code_dir: Path, env: dict[str, str]) -> str:
        requirements = code_dir / "requirements.txt"
        if requirements.is_file():
            envs_dir = Path(
                self.env.get(contract.ENV_ENVS_DIR) or self.root / ".salvia" / "envs"
            ).absolute()
            python = requirements_env(python, requirements, envs_dir, self._pip_runner(env))
            self.log.line(f"Using the requirements environment {Path(python).parent.parent}")
        if (code_dir / "setup.py").is_file():
            # TTK pip-installs the package (`pip install .`) before running `python -m <module>`;
            # that install is the job's own, so it goes into a venv of this instance.
            venv = self.root / ".salvia" / "package-env"
            shutil.rmtree(venv, ignore_errors=True)
            venv_python = _layered_venv(python, venv)
            self.log.line(f"Installing the module in {code_dir}")
            command = [venv_python, *_PIP_INSTALL, "."]
            if importlib.util.find_spec("setuptools") is not None:
                # build with the setuptools already here rather than fetch one from an index
                command.append("--no-build-isolation")
            status = self._run_child(command, env, str(code_dir))
            if status != 0:
                raise LauncherError(
                    _process_error("InstallModuleError", status, self._error_message(), command)
                )
            python = venv_python
        return python

    def _pip_runner(self, env: dict[str, str]) -> _PipRunner:
        def run(command: list[str], cwd: Path) -> int:
            self.log.line("Installing dependencies from requirements.txt: " + shlex.join(command))
            status = self._run_child(command, env, str(cwd))
            if status != 0:
                message = self._error_message()
                raise LauncherError(
                    _process_error("InstallRequirementsError", status, message, command)
                )
            return status

        return run

    # -- children ---------------------------------------------------------------------------
    def _run_child(
        self, command: Sequence[str], env: Mapping[str, str], cwd: str, capture_errors: bool = False
    ) -> int:
        self._stderr_tail.clear()
        try:
            child = subprocess.Popen(
                list(command),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise LauncherError(f"ClientError: could not run {shlex.join(command)}: {exc}") from exc
        self.child = child
        if self.stop_signal is not None:  # a stop that came while the child was being started
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(self.stop_signal)
        assert child.stdout is not None and child.stderr is not None
        pumps = [
            threading.Thread(target=self._pump, args=(child.stdout, False), daemon=True),
            threading.Thread(target=self._pump, args=(child.stderr, True), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        status = child.wait()
        for pump in pumps:
            # A process the script left behind may hold its pipes open; don't wait for it.
            pump.join(timeout=_PUMP_DRAIN_SECONDS)
        self.child = None
        if capture_errors and status != 0 and self.stop_signal is None:
            _write_failure(
                self.root,
                _process_error("ExecuteUserScriptError", status, self._error_message(), command),
            )
        return status

    def _pump(self, stream: IO[bytes], is_stderr: bool) -> None:
        with stream:
            while raw := stream.readline(_MAX_LINE):
                message = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.log.line(message, raw if raw.endswith(b"\n") else raw + b"\n")
                if is_stderr:
                    self._stderr_tail.append(message)

    def _error_message(self) -> str:
        """The end of stderr from its first line that names an error (as TTK's `watch`)."""
        lines = list(self._stderr_tail)
        for i, line in enumerate(lines):
            if any(word in line for word in _PYTHON_ERRORS):
                return "\n".join(lines[i:])
        return "\n".join(lines[-5:])


def requirements_env(
    python: str, requirements: Path, envs_dir: Path, run: _PipRunner | None = None
) -> str:
    """The interpreter of a virtual environment that has `requirements` installed over
    `python`'s packages, built once per distinct file (sha256 of its bytes) under `envs_dir`
    and reused after; concurrent builders of one file wait for each other (a file lock).
    `run(command, cwd)` runs pip and returns its exit status (default: subprocess.call).
    Raises LauncherError when pip fails; nothing half-built is left to be reused."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:32]
    envs_dir.mkdir(parents=True, exist_ok=True)
    venv = envs_dir / digest
    venv_python = str(venv / "bin" / "python")
    if (venv / _COMPLETE).exists():
        return venv_python
    run = run or (lambda command, cwd: subprocess.call(command, cwd=cwd))
    with (envs_dir / f"{digest}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (venv / _COMPLETE).exists():
                return venv_python
            shutil.rmtree(venv, ignore_errors=True)  # a build that died half-way
            _layered_venv(python, venv)
            command = [venv_python, *_PIP_INSTALL, "-r", str(requirements)]
            try:
                status = run(command, requirements.parent)
            except BaseException:
                shutil.rmtree(venv, ignore_errors=True)
                raise
            if status != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise LauncherError(
                    _process_error(
                        "InstallRequirementsError", status, "pip install failed", command
                    )
                )
            (venv / _COMPLETE).touch()
            return venv_python
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _layered_venv(python: str, venv: Path) -> str:
    """A venv whose own packages come first and `python`'s packages stay visible after them.

    `--system-site-packages` alone is not enough: when `python` is itself in a venv (Salvia's
    usual install), it would expose the base interpreter's packages, not that venv's. A `.pth`
    file listing `python`'s sys.path does it in both cases, and lets the base's pip serve."""
    try:
        subprocess.run(
            [python, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
            check=True,
            capture_output=True,
        )
        probe = subprocess.run(
            [python, "-E", "-c", "import json, sys; print(json.dumps(sys.path))"],
            check=True,
            capture_output=True,
        )
        venv_python = venv / "bin" / "python"
        site = subprocess.run(
            [str(venv_python), "-E", "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise LauncherError(
            f"ClientError: could not create a virtual environment at {venv}: {exc} "
            + detail.decode("utf-8", "replace")
        ) from exc
    parent_paths = [p for p in json.loads(probe.stdout) if p and os.path.isdir(p)]
    site_dir = Path(site.stdout.decode().strip())
    (site_dir / "_salvia_parent.pth").write_text("\n".join(parent_paths) + "\n", encoding="utf-8")
    return str(venv_python)


def _container_command(command: list[str], python: str, base: str) -> list[str]:
    """ContainerEntrypoint + ContainerArguments, made to run here: the image's `python` is the
    runtime's interpreter, and literal /opt/ml paths follow the base directory."""
    if not all(isinstance(part, str) for part in command):
        raise LauncherError("ClientError: ContainerEntrypoint/ContainerArguments must be strings")
    if os.path.basename(command[0]) in ("python", "python3"):
        command = [python, *command[1:]]
    if base != contract.OPT_ML:
        prefix = contract.OPT_ML + "/"
        command = [
            base + part[len(contract.OPT_ML) :]
            if part == contract.OPT_ML or part.startswith(prefix)
            else part
            for part in command
        ]
    return command


def _torchrun(
    framework_params: Mapping[str, Any],
    hosts: list[str],
    sm_env: Mapping[str, str],
    num_gpus: int,
    master_port: int,
) -> contract.TorchRun | None:
    for flag, what in (
        ("sagemaker_mpi_enabled", "mpi"),
        ("sagemaker_distributed_dataparallel_enabled", "smdistributed dataparallel"),
        ("sagemaker_pytorch_xla_multi_worker_enabled", "pytorchxla"),
    ):
        if framework_params.get(flag):
            raise LauncherError(
                f"ClientError: the {what!r} distribution ({flag}) is not supported by Salvia yet; "
                "use torch_distributed."
            )
    # pytorchddp launches through smddprun on SageMaker; torchrun does the same job here.
    if not (
        framework_params.get("sagemaker_torch_distributed_enabled")
        or framework_params.get("sagemaker_pytorch_ddp_enabled")
    ):
        return None
    current = sm_env["SM_CURRENT_HOST"]
    return contract.TorchRun(
        nnodes=len(hosts),
        nproc_per_node=max(num_gpus, 1),
        master_addr=sm_env["MASTER_ADDR"],
        master_port=master_port,
        node_rank=sorted(hosts).index(current),
    )


def _process_error(
    kind: str, status: int, message: str, command: Sequence[str] | None = None
) -> str:
    """TTK's `_CalledProcessError` text: what SageMaker shows after "AlgorithmError: "."""
    code = status if status >= 0 else 128 - status
    text = f'{kind}:\nExitCode {code}\nErrorMessage "{message}"'
    if code == 137:
        text += '\nExtraInfo "OutOfMemory: Process killed by SIGKILL (signal 9)"'
    if command is not None:
        text += f'\nCommand "{shlex.join(command)}"'
    return text


def _write_failure(root: Path, message: str) -> None:
    """Write `output/failure` unless the script wrote its own (TTK `write_failure_file`)."""
    path = root / "output" / "failure"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError), path.open("x", encoding="utf-8") as out:
        out.write(message)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LauncherError(f"ClientError: cannot read {path.name}: {exc}") from exc
    if not isinstance(record, dict):
        raise LauncherError(f"ClientError: {path.name} is not a JSON object")
    return record


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise LauncherError(f"ClientError: the launcher needs {name} in its environment")
    return value


def _exit(status: int) -> None:
    """End as the script ended: its exit code, or the signal that killed it."""
    if status < 0:
        sig = -status
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL):
            sys.stdout.flush()
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        status = 128 + sig
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        sys.stderr.write("usage: python -m salvia.compute.launcher <instance_root> <log_events>\n")
        sys.exit(2)
    root, events_path = Path(args[0]).absolute(), Path(args[1])
    events_path.parent.mkdir(parents=True, exist_ok=True)
    with events_path.open("ab") as events:
        log = _Log(events)
        launcher = _Launcher(root, log, dict(os.environ))
        launcher.install_signal_handlers()
        try:
            status = launcher.run()
        except LauncherError as exc:
            if launcher.stop_signal is not None:  # stopped while installing: not a failure
                _exit(-launcher.stop_signal)
            message = str(exc)
            for line in message.splitlines():
                log.line(line)
            _write_failure(root, message)
            sys.exit(1)
        except Exception as exc:  # a bug of ours: report it as TTK reports a framework error
            message = f"Framework Error: \n{traceback.format_exc()}\n{exc}"
            for line in message.splitlines():
                log.line(line)
            _write_failure(root, message)
            sys.exit(1)
        if status == 0:
            success = root / "output" / "success"
            success.parent.mkdir(parents=True, exist_ok=True)
            success.touch()
    _exit(status)


if __name__ == "__main__":
    main()
