"""Hyperparameter ranges: SageMaker's `ParameterRanges`, checked once and turned into Optuna
distributions, and the values Optuna samples turned back into hyperparameter strings.

Scaling follows SageMaker: `Linear`, `Logarithmic` (values > 0), `ReverseLogarithmic` (continuous
values in [0, 1), sampled densely near 1: Optuna samples `1 - x` on a log scale) and `Auto`, which
chooses the log scale for a positive range spanning two orders of magnitude or more.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

from salvia.errors import ValidationException

SCALING_TYPES = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
_KINDS = {
    "IntegerParameterRanges": "Integer",
    "ContinuousParameterRanges": "Continuous",
    "CategoricalParameterRanges": "Categorical",
}


@dataclass(frozen=True)
class Range:
    """One tuned hyperparameter; `key` is its Optuna parameter name."""

    key: str
    name: str
    kind: str  # Integer | Continuous | Categorical
    low: float = 0.0
    high: float = 0.0
    values: tuple[str, ...] = ()
    scaling: str = "Linear"  # resolved: Linear | Logarithmic | ReverseLogarithmic

    def distribution(self) -> BaseDistribution:
        if self.kind == "Categorical":
            return CategoricalDistribution(self.values)
        log = self.scaling == "Logarithmic"
        if self.kind == "Integer":
            return IntDistribution(int(self.low), int(self.high), log=log)
        if self.scaling == "ReverseLogarithmic":
            return FloatDistribution(1.0 - self.high, 1.0 - self.low, log=True)
        return FloatDistribution(self.low, self.high, log=log)

    def suggest(self, trial: Trial) -> Any:
        distribution = self.distribution()
        if isinstance(distribution, CategoricalDistribution):
            return trial.suggest_categorical(self.key, list(self.values))
        if isinstance(distribution, IntDistribution):
            return trial.suggest_int(
                self.key, distribution.low, distribution.high, log=distribution.log
            )
        assert isinstance(distribution, FloatDistribution)
        return trial.suggest_float(
            self.key, distribution.low, distribution.high, log=distribution.log
        )

    def hyperparameter(self, sampled: Any) -> str:
        """The string a training job receives for the value Optuna sampled."""
        if self.kind == "Categorical":
            return str(sampled)
        if self.kind == "Integer":
            return str(int(sampled))
        value = 1.0 - float(sampled) if self.scaling == "ReverseLogarithmic" else float(sampled)
        return repr(min(max(value, self.low), self.high))

    def sampled(self, hyperparameter: str) -> Any | None:
        """The Optuna value of a hyperparameter string, None when outside this range (warm
        start maps a parent's trials into this job's ranges)."""
        try:
            if self.kind == "Categorical":
                return hyperparameter if hyperparameter in self.values else None
            if self.kind == "Integer":
                number = int(float(hyperparameter))
                return number if self.low <= number <= self.high else None
            value = float(hyperparameter)
        except ValueError:
            return None
        if not self.low <= value <= self.high:
            return None
        if self.scaling == "ReverseLogarithmic":
            internal = 1.0 - value
            return internal if internal > 0 else None
        return value


@dataclass(frozen=True)
class SearchSpace:
    """The tuned hyperparameters of one training job definition."""

    ranges: tuple[Range, ...]

    @classmethod
    def parse(cls, ranges: Mapping[str, Any] | None, member: str, prefix: str = "") -> SearchSpace:
        parsed: list[Range] = []
        seen: set[str] = set()
        for group, kind in _KINDS.items():
            for index, item in enumerate((ranges or {}).get(group) or []):
                where = f"{member}.{group}.{index + 1}"
                name = item.get("Name") or ""
                if not name:
                    raise ValidationException(f"{where}.Name must not be empty.")
                if name in seen:
                    raise ValidationException(
                        f"{where}.Name: hyperparameter '{name}' is given more than one range."
                    )
                seen.add(name)
                parsed.append(_parse_range(item, kind, prefix + name, where))
        if (ranges or {}).get("AutoParameters"):
            raise ValidationException(
                f"{member}.AutoParameters (Autotune) is not supported by Salvia yet; give the "
                "ranges explicitly."
            )
        return cls(tuple(parsed))

    @property
    def names(self) -> set[str]:
        return {r.name for r in self.ranges}

    def grid_size(self) -> int:
        return math.prod(len(r.values) for r in self.ranges)

    def grid(self) -> dict[str, list[Any]]:
        return {r.key: list(r.values) for r in self.ranges}

    def combinations(self) -> list[dict[str, Any]]:
        keys = [r.key for r in self.ranges]
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(r.values for r in self.ranges))
        ]


def _parse_range(item: Mapping[str, Any], kind: str, key: str, where: str) -> Range:
    name = item["Name"]
    if kind == "Categorical":
        values = tuple(item.get("Values") or ())
        if not values:
            raise ValidationException(f"{where}.Values must list at least one value.")
        if len(set(values)) != len(values):
            raise ValidationException(f"{where}.Values for '{name}' repeat a value: {values}.")
        return Range(key, name, kind, values=values)
    low, high = (_number(item.get(m), kind, f"{where}.{m}") for m in ("MinValue", "MaxValue"))
    if low > high:
        raise ValidationException(
            f"{where}: MinValue {low} of '{name}' is greater than MaxValue {high}."
        )
    scaling = item.get("ScalingType") or "Auto"
    if scaling not in SCALING_TYPES:
        raise ValidationException(
            f"{where}.ScalingType '{scaling}' is not one of {', '.join(SCALING_TYPES)}."
        )
    if scaling == "Auto":
        scaling = "Logarithmic" if low > 0 and high / low >= 100 else "Linear"
    if scaling == "Logarithmic" and low <= 0:
        raise ValidationException(
            f"{where}: Logarithmic scaling of '{name}' needs MinValue > 0; got {low}."
        )
    if scaling == "ReverseLogarithmic":
        if kind != "Continuous":
            raise ValidationException(
                f"{where}.ScalingType ReverseLogarithmic is only valid for continuous ranges."
            )
        if not (low >= 0 and high < 1):
            raise ValidationException(
                f"{where}: ReverseLogarithmic scaling of '{name}' needs 0 <= MinValue <= "
                f"MaxValue < 1; got [{low}, {high}]."
            )
    return Range(key, name, kind, low=low, high=high, scaling=scaling)


def _number(text: Any, kind: str, member: str) -> float:
    try:
        value = int(text) if kind == "Integer" else float(text)
    except (TypeError, ValueError):
        expected = "an integer" if kind == "Integer" else "a number"
        raise ValidationException(f"{member} must be {expected}; got '{text}'.") from None
    if not math.isfinite(value):
        raise ValidationException(f"{member} must be finite; got '{text}'.")
    return float(value)
