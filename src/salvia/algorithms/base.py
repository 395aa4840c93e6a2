"""What every built-in algorithm shares: hyperparameter specs and their checks, the training
context read from the container contract, metric lines, and the failure file."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

_REQUIRED = object()


class AlgorithmError(Exception):
    """A problem with the job's input (hyperparameters, data): becomes its FailureReason."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter as SageMaker documents it."""

    name: str
    kind: type  # int, float, str or bool
    default: Any = _REQUIRED
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # inclusive bounds
    high: float | None = None
    aliases: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def parse(self, text: str) -> Any:
        try:
            if self.kind is bool:
                lowered = text.strip().lower()
                if lowered not in {"true", "false", "1", "0"}:
                    raise ValueError(text)
                value: Any = lowered in {"true", "1"}
            elif self.kind is int:
                number = float(text)
                if not number.is_integer():
                    raise ValueError(text)
                value = int(number)
            elif self.kind is float:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError(text)
            else:
                value = text
        except ValueError:
            raise AlgorithmError(
                f"Hyperparameter {self.name}: '{text}' is not a valid {self.kind.__name__}."
            ) from None
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise AlgorithmError(
                f"Hyperparameter {self.name}: '{text}' is not one of the allowed values: {allowed}."
            )
        if self.low is not None and value < self.low:
            raise AlgorithmError(f"Hyperparameter {self.name}: {value} is below {self.low}.")
        if self.high is not None and value > self.high:
            raise AlgorithmError(f"Hyperparameter {self.name}: {value} is above {self.high}.")
        return value


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str  # "kmeans"
    repositories: tuple[str, ...]  # official image repositories: ("kmeans",)
    params: tuple[Param, ...]
    train: str  # "salvia.algorithms.kmeans:train"
    channels: tuple[str, ...] = ("train", "validation", "test")
    required_channels: tuple[str, ...] = ("train",)
    content_types: tuple[str, ...] = ("text/csv", "application/x-recordio-protobuf")
    metrics: tuple[tuple[str, str], ...] = ()  # (MetricName, Regex)
    module: str | None = None  # a library that must be importable (e.g. "xgboost")
    extra: str | None = None  # the Salvia extra that installs it
    inference: str | None = None  # "salvia.algorithms.kmeans" (module with the handlers)
    # unknown hyperparameters are refused unless the algorithm passes them through (XGBoost)
    allow_unknown: bool = False

    def metric_definitions(self) -> list[dict[str, str]]:
        return [{"Name": name, "Regex": regex} for name, regex in self.metrics]

    def parse_hyperparameters(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """Typed values with defaults; raises AlgorithmError naming a missing or bad one."""
        known = {p.name: p for p in self.params}
        for param in self.params:
            for alias in param.aliases:
                known[alias] = param
        values: dict[str, Any] = {}
        for name, text in raw.items():
            if name.startswith("sagemaker_") or name == "_tuning_objective_metric":
                continue
            found = known.get(name)
            if found is None:
                if self.allow_unknown:
                    values[name] = text
                    continue
                raise AlgorithmError(f"Hyperparameter {name} is not recognized by {self.name}.")
            values[found.name] = found.parse(str(text))
        for param in self.params:
            if param.name not in values:
                if param.required:
                    raise AlgorithmError(
                        f"Hyperparameter {param.name} is required by {self.name} and missing."
                    )
                values[param.name] = param.default
        return values


def quality_metric(channel: str, metric: str) -> tuple[str, str]:
    """A metric definition matching the lines `log_metric` prints, as SageMaker's first-party
    algorithms log them: `#quality_metric: host=algo-1, test msd <loss>=0.42`."""
    return (
        f"{channel}:{metric}",
        rf"#quality_metric: host=\S+, {channel} {metric} <\w+>=(\S+)",
    )


def log_metric(channel: str, metric: str, value: float, kind: str = "score") -> None:
    host = os.environ.get("SM_CURRENT_HOST", "algo-1")
    print(f"#quality_metric: host={host}, {channel} {metric} <{kind}>={value}", flush=True)


@dataclass
class TrainingContext:
    """The container contract as an algorithm sees it (from the SM_* variables)."""

    model_dir: Path
    output_dir: Path
    channels: dict[str, Path]
    content_types: dict[str, str | None]
    raw_hyperparameters: dict[str, str]
    hosts: list[str] = field(default_factory=lambda: ["algo-1"])
    current_host: str = "algo-1"
    num_cpus: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainingContext:
        env = os.environ if env is None else env
        config_dir = Path(env.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config"))
        hyperparameters = _read_json(config_dir / "hyperparameters.json")
        data_config = _read_json(config_dir / "inputdataconfig.json")
        channels = {
            name: Path(env.get(f"SM_CHANNEL_{name.upper()}", f"/opt/ml/input/data/{name}"))
            for name in data_config
        }
        return cls(
            model_dir=Path(env.get("SM_MODEL_DIR", "/opt/ml/model")),
            output_dir=Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output")),
            channels=channels,
            content_types={n: (c or {}).get("ContentType") for n, c in data_config.items()},
            raw_hyperparameters={k: str(v) for k, v in hyperparameters.items()},
            hosts=json.loads(env.get("SM_HOSTS", '["algo-1"]')),
            current_host=env.get("SM_CURRENT_HOST", "algo-1"),
            num_cpus=int(env.get("SM_NUM_CPUS", os.cpu_count() or 1)),
        )

    def check_channels(self, spec: AlgorithmSpec) -> None:
        for name in self.channels:
            if name not in spec.channels:
                takes = ", ".join(spec.channels)
                raise AlgorithmError(
                    f"Channel {name} is not used by {spec.name}; it takes {takes}."
                )
        for name in spec.required_channels:
            if name not in self.channels:
                raise AlgorithmError(f"Channel {name} is required by {spec.name}.")
        for name, content_type in self.content_types.items():
            base = (content_type or "text/csv").split(";")[0].strip()
            if base not in spec.content_types:
                allowed = ", ".join(spec.content_types)
                raise AlgorithmError(
                    f"Channel {name}: content type {base} is not supported by {spec.name} "
                    f"(supported: {allowed})."
                )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_training(
    spec: AlgorithmSpec, train: Callable[[TrainingContext, dict[str, Any]], None]
) -> None:
    """The algorithm container's `train`: check, run, and leave the failure file on error.

    Ends the process itself: everything the job leaves is on disk by then, and the interpreter's
    own teardown of what the libraries imported (xgboost alone brings scikit-learn, SciPy,
    pandas and pyarrow) takes a quarter of a second that every job would wait for."""
    context = TrainingContext.from_env()
    try:
        context.check_channels(spec)
        hyperparameters = spec.parse_hyperparameters(context.raw_hyperparameters)
        train(context, hyperparameters)
    except AlgorithmError as error:
        _fail(context, f"ClientError: {error}")
    except Exception as error:  # the algorithm's own bug, reported as SageMaker does
        traceback.print_exc()
        _fail(context, f"AlgorithmError: {type(error).__name__}: {error}")
    _exit(0)


def _fail(context: TrainingContext, reason: str) -> None:
    print(reason, file=sys.stderr, flush=True)
    failure = context.output_dir / "failure"
    failure.parent.mkdir(parents=True, exist_ok=True)
    failure.write_text(reason[:1024])
    _exit(1)


def _exit(status: int) -> NoReturn:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def channel_files(directory: Path) -> Sequence[Path]:
    """The data files of a channel, in a stable order (hidden files and markers skipped)."""
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
    )
