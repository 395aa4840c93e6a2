"""Helpers the first-party algorithms share for their inputs: content-type parameters,
metric-name lists, `auto` integers and dense feature matrices of a fixed width."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms.base import AlgorithmError


def label_size(content_type: str | None, default: int = 0) -> int:
    """The `label_size` parameter of a content type such as `text/csv;label_size=1`."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "label_size":
            try:
                return int(value.strip())
            except ValueError:
                raise AlgorithmError(f"label_size={value.strip()} is not an integer.") from None
    return default


def parse_metric_list(name: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """A JSON list (`["msd","ssd"]`) or a comma-separated list of metric names."""
    try:
        value = json.loads(text)
        items = value if isinstance(value, list) else [value]
    except ValueError:
        items = text.strip().strip("[]").split(",")
    names = [str(item).strip().strip("'\"\\").strip() for item in items]
    names = [n for n in names if n]
    for metric in names:
        if metric not in allowed:
            raise AlgorithmError(
                f"Hyperparameter {name}: '{metric}' is not one of the allowed values: "
                f"{', '.join(allowed)}."
            )
    return names


def auto_or_int(name: str, text: str, low: int = 1) -> int | None:
    """None for 'auto', else an integer of at least `low`."""
    if text.strip().lower() == "auto":
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer() or number < low:
        raise AlgorithmError(
            f"Hyperparameter {name}: '{text}' is not 'auto' or an integer of at least {low}."
        )
    return int(number)


def load_features(path: Path, content_type: str | None, feature_dim: int, labels: int) -> Any:
    from salvia.algorithms.data import load

    if labels > 1:
        raise AlgorithmError(f"label_size={labels} is not supported; use 0 or 1.")
    dataset = load(path, content_type, labeled=labels == 1)
    features = dataset.features
    if hasattr(features, "toarray"):
        features = features.toarray()
    features = np.asarray(features, dtype=np.float64)
    if features.shape[1] != feature_dim:
        raise AlgorithmError(
            f"Channel {path.name} has {features.shape[1]} features but feature_dim is "
            f"{feature_dim}."
        )
    return features
