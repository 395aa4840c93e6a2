"""What the tabular gradient-boosting algorithms (LightGBM, CatBoost) share, as SageMaker's
JumpStart tabular algorithms behave: CSV (no header, label first) or parquet channels, the
problem type detected from the labels, per-iteration metric lines, and CSV/JSON inference.

The problem type follows the documentation: labels that are not all integers mean regression;
integer labels with two distinct values mean binary classification, with three up to
`MAX_CLASSES` multiclass classification, with more regression. Class labels may be any
integers; they are trained as their rank (0..k-1) and predicted back as the original values.
`problem.json` in SM_MODEL_DIR records the problem type and the classes for inference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import AlgorithmError, channel_files

MAX_CLASSES = 100
CONTENT_TYPES = ("text/csv", "application/x-parquet")
PROBLEM_FILE = "problem.json"


@dataclass
class Problem:
    kind: str  # "regression", "binary" or "multiclass"
    classes: list[float] = field(default_factory=list)

    @property
    def classification(self) -> bool:
        return self.kind != "regression"

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Class labels as 0..k-1 (unknown classes refused); regression targets unchanged."""
        if not self.classification:
            return labels
        index = np.searchsorted(self.classes, labels)
        index = np.clip(index, 0, len(self.classes) - 1)
        if not np.array_equal(np.asarray(self.classes)[index], labels):
            raise AlgorithmError("The validation labels hold classes the training labels lack.")
        return index.astype(np.float64)

    def save(self, model_dir: Path) -> None:
        (model_dir / PROBLEM_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, model_dir: Path) -> Problem:
        return cls(**json.loads((model_dir / PROBLEM_FILE).read_text()))


def detect_problem(labels: np.ndarray) -> Problem:
    integral = bool(np.all(np.isfinite(labels)) and np.all(np.mod(labels, 1) == 0))
    classes = np.unique(labels) if integral else np.empty(0)
    if integral and len(classes) == 2:
        return Problem("binary", classes.tolist())
    if integral and 2 < len(classes) <= MAX_CLASSES:
        return Problem("multiclass", classes.tolist())
    return Problem("regression")


def load_table(directory: Path, content_type: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (the first column) of a CSV or parquet channel."""
    kind = (content_type or formats.CSV).split(";")[0].strip().lower()
    files = [p for p in channel_files(directory) if p.suffix != ".json"]
    if not files:
        raise AlgorithmError(f"Channel {directory.name} has no data files.")
    blocks = []
    for path in files:
        if kind == "application/x-parquet":
            import pandas as pd

            block = pd.read_parquet(path).to_numpy(dtype=np.float64)
        else:
            block = _read_csv(path)
        if block.size:
            blocks.append(block)
    if not blocks:
        raise AlgorithmError(f"Channel {directory.name} has no rows.")
    if len({b.shape[1] for b in blocks}) > 1:
        raise AlgorithmError(f"The files of channel {directory.name} differ in their columns.")
    data = np.vstack(blocks)
    if data.shape[1] < 2:
        raise AlgorithmError("Rows need a label column and at least one feature.")
    return data[:, 1:], data[:, 0]


# what numpy's loadtxt reads as NaN; an empty cell is an error, as it is there
_NAN_TOKENS = ("nan", "NaN", "NAN", "+nan", "-nan", "+NaN", "-NaN")


def _read_csv(path: Path) -> np.ndarray:
    """A numeric CSV file as numpy's `loadtxt(path, delimiter=",")` reads it (the same values,
    `#` comments and blank lines skipped, a ragged row or a non-number refused), parsed by
    pandas' C reader: several times faster, and pandas is loaded with the libraries anyway."""
    import pandas as pd

    try:
        frame = pd.read_csv(
            path,
            header=None,
            dtype=np.float64,
            comment="#",
            keep_default_na=False,
            na_values=list(_NAN_TOKENS),
        )
    except pd.errors.EmptyDataError:
        return np.empty((0, 0))
    except ValueError as error:  # pandas' ParserError is one too
        raise AlgorithmError(f"{path.name} is not numeric CSV without a header: {error}") from None
    return frame.to_numpy(dtype=np.float64)


def log_iteration(iteration: int, results: Iterable[tuple[str, str, float]]) -> None:
    """`[iteration]\\ttrain-<metric>:<value>\\tvalidation-<metric>:<value>`, XGBoost's layout."""
    cells = "".join(f"\t{channel}-{metric}:{value:.6g}" for channel, metric, value in results)
    if cells:
        print(f"[{iteration}]{cells}", flush=True)


def metric_definitions(names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """`train:<metric>` and `validation:<metric>` for the lines `log_iteration` prints."""
    return tuple(
        (f"{channel}:{name}", rf".*\[[0-9]+\].*{channel}-{re.escape(name)}:([-+0-9.eE]+|nan|inf)")
        for channel in ("train", "validation")
        for name in names
    )


def decode(body: bytes | str, content_type: str | None) -> np.ndarray:
    """CSV rows (no label), JSON `{"instances": [...]}` or a list of rows, or JSON Lines."""
    return formats.decode_rows(body, content_type)


@dataclass
class Prediction:
    output: np.ndarray  # the library's prediction: values or class probabilities
    problem: Problem


def predictions(problem: Problem, output: np.ndarray) -> list[dict[str, Any]]:
    """Regression: `{"score": v}`; classification: `{"predicted_label", "probabilities"}` with
    the probabilities in the order of `problem.classes`."""
    if not problem.classification:
        return [{"score": float(v)} for v in np.ravel(output)]
    probabilities = np.asarray(output, dtype=np.float64)
    if probabilities.ndim == 1:  # the positive class of a binary problem
        probabilities = np.column_stack([1 - probabilities, probabilities])
    classes = problem.classes
    return [
        {"predicted_label": _plain(classes[int(np.argmax(row))]), "probabilities": row.tolist()}
        for row in probabilities
    ]


def encode(prediction: Prediction, accept: str | None) -> tuple[bytes, str]:
    """JSON `{"predictions": [...]}` (the default), JSON Lines, or CSV: one score, or the
    class probabilities, per line."""
    problem = prediction.problem
    columns = ("probabilities",) if problem.classification else ("score",)
    return formats.encode_predictions(predictions(problem, prediction.output), accept, columns)


def _plain(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
