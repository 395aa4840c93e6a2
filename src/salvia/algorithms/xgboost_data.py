"""The training data of SageMaker's built-in XGBoost algorithm, as its container reads a channel
(`data_utils`): CSV (label first, optionally a weight), LIBSVM (the default), Parquet and
RecordIO-protobuf, into an `xgboost.DMatrix`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import AlgorithmError, channel_files
from salvia.algorithms.xgboost_inference import csv_rows

# algorithm_mode/data_utils.py VALID_CONTENT_TYPES
CONTENT_TYPES = (
    "text/libsvm",
    "text/x-libsvm",
    "libsvm",
    "text/csv",
    "csv",
    "application/x-parquet",
    "parquet",
    "application/x-recordio-protobuf",
    "recordio-protobuf",
)


def content_kind(content_type: str | None) -> str:
    """data_utils.get_content_type: 'libsvm' (the default), 'csv', 'parquet' or 'recordio'."""
    if content_type is None:
        return "libsvm"
    base, *options = (part.strip() for part in content_type.lower().split(";"))
    if base in ("csv", "text/csv"):
        for option in options:
            key, _, value = option.partition("=")
            if key.strip() == "label_size" and value.strip() != "1":
                raise AlgorithmError(
                    f"{content_type} is not an accepted csv ContentType. "
                    "Optional parameter label_size must be equal to 1"
                )
        return "csv"
    if base in ("libsvm", "text/libsvm", "text/x-libsvm"):
        return "libsvm"
    if base in ("parquet", "application/x-parquet"):
        return "parquet"
    if base in ("recordio-protobuf", "application/x-recordio-protobuf"):
        return "recordio"
    raise AlgorithmError(f"{content_type} is not an accepted ContentType: "
                         + ", ".join(CONTENT_TYPES) + ".")  # fmt: skip


def _libsvm(text: str) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """`label[:weight] index:value ...` with the indices as given (XGBoost's parser)."""
    from scipy import sparse

    labels, weights, indptr, indices, values = [], [], [0], [], []
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        label, _, weight = tokens[0].partition(":")
        try:
            labels.append(float(label))
            weights.append(float(weight) if weight else np.nan)
            for token in tokens[1:]:
                index, _, value = token.partition(":")
                indices.append(int(index))
                values.append(float(value))
        except ValueError:
            raise AlgorithmError(f"Line {number} is not in LIBSVM format: {line[:50]}") from None
        indptr.append(len(indices))
    width = max(indices) + 1 if indices else 0
    matrix = sparse.csr_matrix((values, indices, indptr), shape=(len(labels), width))
    weight_array = np.array(weights)
    has_weights = bool(np.isfinite(weight_array).any())
    return matrix, np.array(labels), np.nan_to_num(weight_array, nan=1.0) if has_weights else None


def _csv_file(path: Path) -> np.ndarray:
    """A training CSV as floats (empty cells missing): pandas' C parser when it is installed,
    which reads 100k rows about ten times faster than the request parser below."""
    try:
        import pandas as pd
    except ImportError:
        return csv_rows(path.read_text())[0]
    with path.open() as fh:
        first = fh.readline()
    delimiter = csv_rows(first)[1] if first.strip() else ","
    try:
        frame = pd.read_csv(path, header=None, sep=delimiter, dtype=np.float64, engine="c")
    except (ValueError, pd.errors.ParserError) as error:
        raise AlgorithmError(
            f"Loading csv data failed, please ensure data is in csv format: {error}"
        ) from None
    except pd.errors.EmptyDataError:
        return np.empty((0, 0))
    return frame.to_numpy()


def load_channel(directory: Path, kind: str, csv_weights: int = 0) -> Any:
    """The channel as an `xgboost.DMatrix` (None when it holds no data)."""
    import xgboost as xgb

    from salvia.algorithms import data

    files = channel_files(directory)
    if not files or not any(p.stat().st_size for p in files):
        return None
    if kind == "csv":
        blocks = [_csv_file(p) for p in files]
        widths = {b.shape[1] for b in blocks if b.size}
        if len(widths) != 1:
            raise AlgorithmError(f"CSV files have different numbers of columns: {widths}.")
        rows = np.vstack([b for b in blocks if b.size])
        if csv_weights == 1:
            return xgb.DMatrix(rows[:, 2:], label=rows[:, 0], weight=rows[:, 1])
        return xgb.DMatrix(rows[:, 1:], label=rows[:, 0])
    if kind == "libsvm":
        from scipy import sparse

        parts = [_libsvm(p.read_text()) for p in files]
        width = max(m.shape[1] for m, _, _ in parts)
        matrix = sparse.vstack([sparse.csr_matrix((m.data, m.indices, m.indptr),
                                                  shape=(m.shape[0], width))
                                for m, _, _ in parts]).tocsr()  # fmt: skip
        labels = np.concatenate([y for _, y, _ in parts])
        weights = None
        if any(w is not None for _, _, w in parts):
            weights = np.concatenate([w if w is not None else np.ones(len(y))
                                      for _, y, w in parts])  # fmt: skip
        return xgb.DMatrix(matrix, label=labels, weight=weights)
    content_type = "application/x-parquet" if kind == "parquet" else formats.RECORDIO
    loaded = data.load(directory, content_type)
    return xgb.DMatrix(loaded.features, label=loaded.labels)
