"""Reading a channel's data in the formats SageMaker's algorithms accept.

- `text/csv`: no header; the label in the first column for supervised algorithms.
- `text/libsvm` (XGBoost): `label index:value ...`, 1-based or 0-based indices as given.
- `application/x-parquet`: the label in the first column, like CSV.
- `application/x-recordio-protobuf`: the RecordIO-framed protobuf records the SageMaker SDK
  writes (`salvia.algorithms.recordio`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms.base import AlgorithmError, channel_files


@dataclass
class Dataset:
    features: Any  # np.ndarray (rows x features) or a scipy.sparse matrix
    labels: np.ndarray | None

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


def base_type(content_type: str | None) -> str:
    return (content_type or "text/csv").split(";")[0].strip().lower()


def load(
    directory: Path, content_type: str | None, *, labeled: bool = True, dtype: Any = np.float64
) -> Dataset:
    files = channel_files(directory)
    if not files:
        raise AlgorithmError(f"Channel {directory.name} has no data files.")
    kind = base_type(content_type)
    if kind == "text/csv":
        return _csv(files, labeled, dtype)
    if kind in {"text/libsvm", "text/x-libsvm"}:
        return _libsvm(files, dtype)
    if kind in {"application/x-parquet", "application/parquet"}:
        return _parquet(files, labeled, dtype)
    if kind == "application/x-recordio-protobuf":
        from salvia.algorithms import recordio

        features, labels = recordio.read_dataset(files)
        return Dataset(features.astype(dtype), labels if labeled else None)
    raise AlgorithmError(f"Content type {kind} is not supported.")


def _csv(files: Sequence[Path], labeled: bool, dtype: Any) -> Dataset:
    blocks = []
    for path in files:
        try:
            block = np.loadtxt(path, delimiter=",", dtype=dtype, ndmin=2)
        except ValueError as error:
            raise AlgorithmError(
                f"{path.name} is not numeric CSV without a header: {error}"
            ) from None
        if block.size:
            blocks.append(block)
    if not blocks:
        raise AlgorithmError("The CSV channel has no rows.")
    widths = {b.shape[1] for b in blocks}
    if len(widths) > 1:
        raise AlgorithmError(f"CSV files have different numbers of columns: {sorted(widths)}.")
    data = np.vstack(blocks)
    if labeled:
        if data.shape[1] < 2:
            raise AlgorithmError("CSV rows need a label column and at least one feature.")
        return Dataset(data[:, 1:], data[:, 0])
    return Dataset(data, None)


def _libsvm(files: Sequence[Path], dtype: Any) -> Dataset:
    from scipy import sparse
    from sklearn.datasets import load_svmlight_files

    try:
        loaded = load_svmlight_files([str(p) for p in files], dtype=dtype)
    except ValueError as error:
        raise AlgorithmError(f"The channel is not valid libsvm: {error}") from None
    matrices, labels = loaded[0::2], loaded[1::2]
    width = max(m.shape[1] for m in matrices)
    matrices = [sparse.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], width))
                for m in matrices]  # fmt: skip
    return Dataset(sparse.vstack(matrices).tocsr(), np.concatenate(labels))


def _parquet(files: Sequence[Path], labeled: bool, dtype: Any) -> Dataset:
    try:
        import pandas as pd
    except ImportError:
        raise AlgorithmError(
            "Parquet input needs pandas and pyarrow (salvia[algorithms])."
        ) from None
    frame = pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)
    data = frame.to_numpy(dtype=dtype)
    if labeled:
        return Dataset(data[:, 1:], data[:, 0])
    return Dataset(data, None)
