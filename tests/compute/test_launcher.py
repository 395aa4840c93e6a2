"""The in-instance launcher, run as the executor runs it: a real subprocess over a prepared
instance directory."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from salvia import logfile
from salvia.compute import contract

HYPERPARAMETERS = {
    "epochs": "10",
    "optimizer": '"adam"',
    "layers": "[64, 32]",
    "sagemaker_program": '"train.py"',
    "sagemaker_submit_directory": '"s3://bucket/job/source/sourcedir.tar.gz"',
    "sagemaker_container_log_level": "20",
    "sagemaker_job_name": '"job-1"',
    "sagemaker_region": '"us-east-1"',
}
CHANNELS = [
    {
        "ChannelName": "train",
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://bucket/train/"}},
    }
]

REPORT_SCRIPT = """
import json, os, sys
env = {k: v for k, v in os.environ.items()}
report = {"argv": sys.argv[1:], "env": env, "cwd": os.getcwd(), "python": sys.executable}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "report.json"), "w") as fh:
    json.dump(report, fh)
print("hello from the script")
print("to stderr", file=sys.stderr)
print("epoch=1;\\tloss=0.5")
"""


def make_instance(tmp_path: Path, script: str, entry: str = "train.py", **hps: str) -> Path:
    root = tmp_path / "instance"
    contract.write_config(
        root, {**HYPERPARAMETERS, **hps}, CHANNELS, "algo-1", ["algo-1"], "ml.m5.large"
    )
    contract.write_instance_marker(root)
    (root / "code" / entry).write_text(textwrap.dedent(script))
    return root


def launcher_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SALVIA_"))}
    env.pop("PYTHONPATH", None)
    env.update(
        contract.launcher_environment(
            job_name="job-1",
            job_arn="arn:aws:sagemaker:us-east-1:123456789012:training-job/job-1",
            region="us-east-1",
            host="algo-1",
            hosts=["algo-1"],
            instance_type="ml.m5.large",
            python=sys.executable,
            vcpus=2,
            addresses={"algo-1": "127.0.0.1"},
            envs_dir=tmp_path / "envs",
        )
    )
    env["USER_VARIABLE"] = "from-environment"
    env.update(extra)
    return env


def launch(root: Path, env: dict[str, str], events: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "salvia.compute.launcher", str(root), str(events)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def messages(events: Path) -> list[str]:
    return [event.message for event in logfile.read(events)]


def test_script_sees_the_contract_and_its_output_is_logged(tmp_path: Path) -> None:
    root = make_instance(tmp_path, REPORT_SCRIPT)
    events = tmp_path / "logs" / "algo-1.jsonl"
    before = int(time.time() * 1000)
    result = launch(root, launcher_env(tmp_path), events)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((root / "model" / "report.json").read_text())
    assert report["argv"] == ["--epochs", "10", "--layers", "[64, 32]", "--optimizer", "adam"]
    env = report["env"]
    # /opt/ml is not mounted here, so every path is under the instance root
    assert env["SM_MODEL_DIR"] == str(root / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(root / "input" / "data" / "train")
    assert env["SM_HPS"] == '{"epochs":10,"layers":[64,32],"optimizer":"adam"}'
    assert env["SM_NUM_CPUS"] == "2"
    assert env["SM_CURRENT_HOST"] == "algo-1"
    assert env["TRAINING_JOB_NAME"] == "job-1"
    assert env["MASTER_ADDR"] == "127.0.0.1"
    assert env["USER_VARIABLE"] == "from-environment"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(root / "code")
    assert not [name for name in env if name.startswith("SALVIA_")]
    assert report["cwd"] == str(root / "code")

    logged = messages(events)
    assert "literal /opt/ml paths are unavailable on this host; use the SM_* variables" in logged
    assert "hello from the script" in logged
    assert "to stderr" in logged
    assert "epoch=1;\tloss=0.5" in logged
    assert all(e.timestamp >= before for e in logfile.read(events))
    assert "hello from the script" in result.stdout  # echoed on the launcher's own stdout
    assert (root / "output" / "success").exists()
    assert not (root / "output" / "failure").exists()


def test_exit_code_passes_through_with_a_failure_reason(tmp_path: Path) -> None:
    script = """
    import sys
    print("Traceback (most recent call last):", file=sys.stderr)
    print("ValueError: boom", file=sys.stderr)
    sys.exit(3)
    """
    root = make_instance(tmp_path, script)
    result = launch(root, launcher_env(tmp_path), tmp_path / "events.jsonl")
    assert result.returncode == 3
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("ExecuteUserScriptError:\nExitCode 3\n")
    assert "ValueError: boom" in failure
    assert "train.py --epochs 10" in failure
    assert not (root / "output" / "success").exists()


def test_failure_file_written_by_the_script_is_kept(tmp_path: Path) -> None:
    script = """
    import os, sys
    open(os.path.join(os.environ["SM_OUTPUT_DIR"], "failure"), "w").write("my own reason")
    sys.exit(1)
    """
    root = make_instance(tmp_path, script)
    result = launch(root, launcher_env(tmp_path), tmp_path / "events.jsonl")
    assert result.returncode == 1
    assert (root / "output" / "failure").read_text() == "my own reason"


def test_missing_entry_point_is_a_launcher_failure(tmp_path: Path) -> None:
    root = make_instance(tmp_path, "print('x')", sagemaker_program='"nope.py"')
    events = tmp_path / "events.jsonl"
    result = launch(root, launcher_env(tmp_path), events)
    assert result.returncode == 1
    failure = (root / "output" / "failure").read_text()
    assert "'nope.py'" in failure and "not found" in failure
    assert any("nope.py" in m for m in messages(events))


def test_missing_job_variables_are_a_launcher_failure(tmp_path: Path) -> None:
    root = make_instance(tmp_path, "print('x')")
    env = launcher_env(tmp_path)
    del env[contract.ENV_JOB_ARN]
    result = launch(root, env, tmp_path / "events.jsonl")
    assert result.returncode == 1
    assert "SALVIA_JOB_ARN" in (root / "output" / "failure").read_text()


def test_shell_entry_point(tmp_path: Path) -> None:
    script = 'echo "args: $@"\necho "model: $SM_MODEL_DIR"\n'
    root = make_instance(tmp_path, script, entry="run.sh", sagemaker_program='"run.sh"')
    events = tmp_path / "events.jsonl"
    result = launch(root, launcher_env(tmp_path), events)
    assert result.returncode == 0, result.stderr
    logged = messages(events)
    assert "args: --epochs 10 --layers [64, 32] --optimizer adam" in logged
    assert f"model: {root / 'model'}" in logged


def _wait_for(events: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if events.exists() and text in messages(events):
            return
        assert proc.poll() is None, "the launcher ended early"
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log")


@pytest.mark.parametrize("handled", [True, False])
def test_sigterm_is_forwarded_to_the_script(tmp_path: Path, handled: bool) -> None:
    script = """
    import signal, sys, time
    if HANDLED:
        def stop(signum, frame):
            print("got SIGTERM, saving a checkpoint")
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
    print("ready")
    time.sleep(60)
    """.replace("HANDLED", str(handled))
    root = make_instance(tmp_path, script)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "salvia.compute.launcher", str(root), str(events)],
        env=launcher_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # only the launcher gets the signal; it must forward it
    )
    try:
        _wait_for(events, "ready", proc)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if handled:
        assert status == 7
        assert "got SIGTERM, saving a checkpoint" in messages(events)
    else:
        assert status == -signal.SIGTERM  # ended by the same signal as the script
    assert not (root / "output" / "failure").exists()  # a stop is not a failure


def _wheel(directory: Path, name: str, version: str, source: str) -> Path:
    """A minimal pure-Python wheel, built by hand so that no build backend or index is needed."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def test_requirements_install_into_a_cached_environment(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _wheel(wheels, "salviatinypkg", "0.1", "VALUE = 42\n")
    script = """
    import sys
    import orjson  # the runtime's own packages stay visible
    import salviatinypkg
    print(f"value={salviatinypkg.VALUE}")
    print(f"python={sys.executable}")
    """
    requirements = f"--no-index\n--find-links {wheels}\nsalviatinypkg==0.1\n"
    env = launcher_env(tmp_path)
    runs = []
    for i in range(2):
        root = make_instance(tmp_path / f"job-{i}", script)
        (root / "code" / "requirements.txt").write_text(requirements)
        events = tmp_path / f"events-{i}.jsonl"
        result = launch(root, env, events)
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(messages(events))
    assert "value=42" in runs[0] and "value=42" in runs[1]
    pythons = {m for run in runs for m in run if m.startswith("python=")}
    assert len(pythons) == 1  # both jobs ran in the same cached environment
    assert str(tmp_path / "envs") in pythons.pop()
    assert any(m.startswith("Installing dependencies from requirements.txt") for m in runs[0])
    assert any("salviatinypkg" in m for m in runs[0])  # pip's own output is in the job log
    assert not any(m.startswith("Installing dependencies") for m in runs[1])  # reused
    assert ".salvia-complete" in os.listdir(next((tmp_path / "envs").glob("*/")))


def test_failed_requirements_install_fails_the_job(tmp_path: Path) -> None:
    root = make_instance(tmp_path, "print('never runs')")
    (root / "code" / "requirements.txt").write_text("--no-index\nsalvia-no-such-package==1\n")
    events = tmp_path / "events.jsonl"
    result = launch(root, launcher_env(tmp_path), events)
    assert result.returncode == 1
    failure = (root / "output" / "failure").read_text()
    assert failure.startswith("InstallRequirementsError:")
    assert "never runs" not in messages(events)
    assert not [p for p in (tmp_path / "envs").iterdir() if p.is_dir()]  # nothing half-built


def test_package_with_setup_py_is_installed_and_run_as_a_module(tmp_path: Path) -> None:
    script = """
    import sys
    import helper
    print(f"helper={helper.NAME} args={sys.argv[1:]}")
    """
    root = make_instance(tmp_path, script)
    (root / "code" / "helper.py").write_text("NAME = 'installed'\n")
    (root / "code" / "setup.py").write_text(
        "from setuptools import setup\n"
        "setup(name='userpkg', version='1.0', py_modules=['train', 'helper'])\n"
    )
    events = tmp_path / "events.jsonl"
    result = launch(root, launcher_env(tmp_path), events)
    assert result.returncode == 0, result.stdout + result.stderr
    logged = messages(events)
    assert (
        "helper=installed args=['--epochs', '10', '--layers', '[64, 32]', '--optimizer', 'adam']"
        in logged
    )
    invocation = logged[logged.index("Invoking script with the following command:") + 1]
    assert invocation.endswith("-m train --epochs 10 --layers '[64, 32]' --optimizer adam")


def test_host_mismatch_is_a_launcher_failure(tmp_path: Path) -> None:
    root = make_instance(tmp_path, "print('x')")
    env = launcher_env(tmp_path, **{contract.ENV_INSTANCE_HOST: "algo-2"})
    result = launch(root, env, tmp_path / "events.jsonl")
    assert result.returncode == 1
    assert "'algo-2'" in (root / "output" / "failure").read_text()


def test_container_entrypoint_replaces_the_script(tmp_path: Path) -> None:
    root = make_instance(tmp_path, "import sys\nprint('custom', sys.argv[1:])\n")
    env = launcher_env(
        tmp_path,
        **contract.launcher_environment(
            job_name="job-1",
            job_arn="arn",
            region="us-east-1",
            host="algo-1",
            hosts=["algo-1"],
            instance_type="ml.m5.large",
            entrypoint=["python3", "/opt/ml/code/train.py"],
            arguments=["--data", "/opt/ml/input/data/train"],
        ),
    )
    events = tmp_path / "events.jsonl"
    result = launch(root, env, events)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = ["--data", str(root / "input" / "data" / "train")]
    assert f"custom {expected}" in messages(events)
