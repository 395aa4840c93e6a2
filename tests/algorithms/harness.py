"""Run a built-in algorithm's `train()` as SageMaker's algorithm containers run: in a fresh
process, over an /opt/ml-like directory, with the SM_* environment pointing into it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainingRun:
    root: Path  # the /opt/ml-like directory
    returncode: int
    stdout: str
    stderr: str

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def failure(self) -> str | None:
        path = self.output_dir / "failure"
        return path.read_text() if path.exists() else None

    @property
    def log(self) -> str:
        return self.stdout + self.stderr


def prepare(
    root: Path,
    hyperparameters: Mapping[str, object],
    channels: Mapping[str, Mapping[str, bytes | str]],
    content_types: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Lay out `root` as /opt/ml (config files, channel data) and return the SM_* environment.
    `channels` maps a channel name to its files (name -> content)."""
    config = root / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (root / "model").mkdir(exist_ok=True)
    (root / "output" / "data").mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({k: str(v) for k, v in hyperparameters.items()})
    )
    data_config: dict[str, dict[str, str]] = {}
    env = {
        "SM_MODEL_DIR": str(root / "model"),
        "SM_OUTPUT_DIR": str(root / "output"),
        "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"),
        "SM_INPUT_DIR": str(root / "input"),
        "SM_INPUT_CONFIG_DIR": str(config),
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "SM_NUM_CPUS": "2",
    }
    for name, files in channels.items():
        directory = root / "input" / "data" / name
        directory.mkdir(parents=True, exist_ok=True)
        for filename, content in files.items():
            target = directory / filename
            if isinstance(content, str):
                target.write_text(content)
            else:
                target.write_bytes(content)
        entry = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
        if content_types and name in content_types:
            entry["ContentType"] = content_types[name]
        data_config[name] = entry
        env[f"SM_CHANNEL_{name.upper()}"] = str(directory)
    (config / "inputdataconfig.json").write_text(json.dumps(data_config))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    return env


def run_training(
    module: str,
    root: Path,
    hyperparameters: Mapping[str, object],
    channels: Mapping[str, Mapping[str, bytes | str]],
    content_types: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> TrainingRun:
    """Run `<module>.train()` in a subprocess over `root` and return what it left."""
    env = {**os.environ, **prepare(root, hyperparameters, channels, content_types)}
    env.update(extra_env or {})
    code = f"import importlib; importlib.import_module({module!r}).train()"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return TrainingRun(root, proc.returncode, proc.stdout, proc.stderr)
