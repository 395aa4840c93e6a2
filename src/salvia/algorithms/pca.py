"""PCA: SageMaker's principal component analysis with its hyperparameters, channels and
response formats.

Both modes stream the training data in mini-batches of `mini_batch_size` rows:
- `regular`: the covariance matrix (the scatter matrix about the mean when `subtract_mean`, about
  zero otherwise) is accumulated batch by batch with the numerically stable pairwise update
  (Chan et al.), then decomposed exactly; the top `num_components` eigenvectors are the
  components and their eigenvalues the explained variances (what scikit-learn's PCA reports as
  `explained_variance_`).
- `randomized`: a randomized range finder (Halko et al.): one pass for the mean, four power
  iterations that each apply the covariance (batch by batch) to a basis of `num_components +
  extra_components` columns (`extra_components=-1` means max(10, num_components)), started from
  a Gaussian matrix and re-orthonormalized after each pass, one pass that projects the
  covariance onto that range, and an exact decomposition of the small result.

Each component's sign is chosen so that its largest coefficient (in absolute value) is positive,
as scikit-learn does. Unlabeled data: every CSV column is a feature unless the content type says
`text/csv;label_size=1`. SageMaker documents no metrics for PCA; a `test` channel is accepted
and its reconstruction error printed.

The model artifact is `pca-model.npz` (not SageMaker's MXNet format): `components`
(num_components x feature_dim), `mean`, `explained_variance`, `singular_values` and a JSON
`meta`. Inference projects `(x - mean) @ components.T` (`x @ components.T` without
`subtract_mean`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    run_training,
)
from salvia.algorithms.features import label_size, load_features

MODEL_FILE = "pca-model.npz"
_SEED = 1
_POWER_ITERATIONS = 4  # passes of the randomized range finder, as scikit-learn's default

_PARAMS = (
    Param("feature_dim", int, low=1),
    Param("mini_batch_size", int, low=1),
    Param("num_components", int, low=1),
    Param("algorithm_mode", str, "regular", choices=("regular", "randomized")),
    Param("subtract_mean", bool, True),
    Param("extra_components", int, -1, low=-1),
)

SPEC = AlgorithmSpec(
    name="pca",
    repositories=("pca",),
    params=_PARAMS,
    train="salvia.algorithms.pca:train",
    channels=("train", "test"),
    inference="salvia.algorithms.pca",
)


def train() -> None:
    run_training(SPEC, _train)


def _batches(data: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _scatter(data: np.ndarray, size: int, center: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, scatter matrix, rows), merged batch by batch. Without `center` the scatter is
    about zero (the mean is still returned, for the record)."""
    width = data.shape[1]
    mean, scatter, rows = np.zeros(width), np.zeros((width, width)), 0
    for batch in _batches(data, size):
        n = len(batch)
        batch_mean = batch.mean(axis=0)
        if center:
            centered = batch - batch_mean
            delta = batch_mean - mean
            scatter += centered.T @ centered + np.outer(delta, delta) * (rows * n / (rows + n))
        else:
            scatter += batch.T @ batch
        mean += (batch_mean - mean) * (n / (rows + n))
        rows += n
    return mean, scatter, rows


def _sign_flip(components: np.ndarray) -> np.ndarray:
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), largest])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def _top(values: np.ndarray, vectors: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(values)[::-1][:count]
    return np.maximum(values[order], 0.0), vectors[:, order].T


def _regular(data: np.ndarray, hp: dict[str, Any]) -> tuple[Any, Any, Any, int]:
    mean, scatter, rows = _scatter(data, int(hp["mini_batch_size"]), bool(hp["subtract_mean"]))
    values, vectors = np.linalg.eigh(scatter)
    variance, components = _top(values, vectors, int(hp["num_components"]))
    return mean, variance / max(rows - 1, 1), components, rows


def _randomized(data: np.ndarray, hp: dict[str, Any]) -> tuple[Any, Any, Any, int]:
    size, count = int(hp["mini_batch_size"]), int(hp["num_components"])
    extra = int(hp["extra_components"])
    extra = max(10, count) if extra < 0 else extra
    width = data.shape[1]
    sketch = min(width, count + extra)
    center = bool(hp["subtract_mean"])
    mean = data.mean(axis=0) if center else np.zeros(width)
    rng = np.random.default_rng(_SEED)
    basis = rng.standard_normal((width, sketch))
    for _ in range(_POWER_ITERATIONS):  # each pass applies the covariance once
        range_ = np.zeros((width, sketch))
        for batch in _batches(data, size):
            rows = batch - mean
            range_ += rows.T @ (rows @ basis)
        basis, _ = np.linalg.qr(range_)
    small = np.zeros((basis.shape[1], basis.shape[1]))
    for batch in _batches(data, size):
        projected = (batch - mean) @ basis
        small += projected.T @ projected
    values, vectors = np.linalg.eigh(small)
    variance, small_components = _top(values, vectors, count)
    components = small_components @ basis.T
    return mean, variance / max(len(data) - 1, 1), components, len(data)


def _train(context: TrainingContext, hp: dict[str, Any]) -> None:
    feature_dim, count = int(hp["feature_dim"]), int(hp["num_components"])
    if count > feature_dim:
        raise AlgorithmError(
            f"Hyperparameter num_components: {count} is above feature_dim ({feature_dim})."
        )
    content_type = context.content_types.get("train")
    data = load_features(
        context.channels["train"], content_type, feature_dim, label_size(content_type)
    )
    if len(data) < 2:
        raise AlgorithmError("PCA needs at least two training rows.")
    solve = _randomized if hp["algorithm_mode"] == "randomized" else _regular
    mean, variance, components, rows = solve(data, hp)
    components = _sign_flip(components)
    singular = np.sqrt(variance * max(rows - 1, 1))
    total = _total_variance(data, mean, bool(hp["subtract_mean"]))
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    print(f"explained variance {variance.tolist()}", flush=True)
    print(f"explained variance ratio {ratio.tolist()}", flush=True)

    if "test" in context.channels:
        test_type = context.content_types.get("test")
        test = load_features(
            context.channels["test"], test_type, feature_dim, label_size(test_type)
        )
        offset = mean if hp["subtract_mean"] else 0.0
        projected = (test - offset) @ components.T
        error = float(np.mean(np.sum((test - offset - projected @ components) ** 2, axis=1)))
        print(f"test reconstruction mean squared error {error:.6g}", flush=True)

    context.model_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "feature_dim": feature_dim,
        "num_components": count,
        "subtract_mean": bool(hp["subtract_mean"]),
        "algorithm_mode": hp["algorithm_mode"],
    }
    np.savez(
        context.model_dir / MODEL_FILE,
        components=components,
        mean=mean,
        explained_variance=variance,
        explained_variance_ratio=ratio,
        singular_values=singular,
        meta=np.array(json.dumps(meta)),
    )


def _total_variance(data: np.ndarray, mean: np.ndarray, center: bool) -> float:
    offset = mean if center else 0.0
    return float(np.sum((data - offset) ** 2) / max(len(data) - 1, 1))


# ---------------------------------------------------------------------------------- inference


def model_fn(model_dir: str | Path) -> dict[str, Any]:
    with np.load(Path(model_dir) / MODEL_FILE) as archive:
        meta = json.loads(str(archive["meta"]))
        arrays = {name: archive[name] for name in archive.files if name != "meta"}
        return {**arrays, **meta}


def input_fn(body: bytes | str, content_type: str | None) -> np.ndarray:
    return formats.decode_rows(body, content_type)


def predict_fn(data: np.ndarray, model: dict[str, Any]) -> list[dict[str, Any]]:
    rows = np.asarray(data, dtype=np.float64)
    width = int(model["feature_dim"])
    if rows.ndim != 2 or rows.shape[1] != width:
        raise AlgorithmError(f"The model takes {width} features; the request has {rows.shape}.")
    if model["subtract_mean"]:
        rows = rows - model["mean"]
    projections = rows @ model["components"].T
    return [{"projection": [float(v) for v in row]} for row in projections]


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    """`{"projections": [{"projection": [...]}, ...]}` for JSON (SageMaker's PCA names the list
    "projections"), one object per line for JSON Lines, the values per row for CSV."""
    kind = formats._base(accept, formats.JSON)
    if kind == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(prediction), formats.RECORDIO
    if kind in {"*/*", formats.JSON}:
        return json.dumps({"projections": prediction}).encode(), formats.JSON
    return formats.encode_predictions(prediction, accept, ("projection",))
