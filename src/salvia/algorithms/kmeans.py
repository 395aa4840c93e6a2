"""K-Means: SageMaker's web-scale (mini-batch) k-means with its hyperparameters, channels,
metrics and response formats.

Training follows SageMaker's description of its algorithm: the training data is streamed in
mini-batches of `mini_batch_size` rows for `epochs` passes (rows shuffled once per pass) while
`k * extra_center_factor` centers are kept up to date by mini-batch k-means (each center moves
to the running mean of the points assigned to it, older points decaying with
`half_life_time_size`); the centers start from the first mini-batch (`init_method`). To finalize
the model, these centers, weighted by the number of points they absorbed, are reduced to `k` by
Lloyd's algorithm (`local_lloyd_*`: initialization, iterations, tolerance on the relative change
in the loss, and the number of trials of which the lowest loss wins).

Unlabeled data: every CSV column is a feature unless the content type says
`text/csv;label_size=1` (then the first column is skipped). The optional `test` channel is
scored with `eval_metrics`: `test:msd` (mean squared distance to the closest center) and
`test:ssd` (their sum).

The model artifact is `kmeans-model.npz` (not SageMaker's MXNet format): the `centers` (k x
feature_dim) and a JSON `meta`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    log_metric,
    quality_metric,
    run_training,
)
from salvia.algorithms.features import auto_or_int, label_size, load_features, parse_metric_list

MODEL_FILE = "kmeans-model.npz"
_SEED = 1  # SageMaker's k-means has no seed hyperparameter; runs are reproducible

_PARAMS = (
    Param("feature_dim", int, low=1),
    Param("k", int, low=1),
    Param("mini_batch_size", int, 5000, low=1),
    Param("epochs", int, 1, low=1),
    Param("eval_metrics", str, '["msd"]'),
    Param("extra_center_factor", str, "auto"),
    Param("half_life_time_size", int, 0, low=0),
    Param("init_method", str, "random", choices=("random", "kmeans++")),
    Param("local_lloyd_init_method", str, "kmeans++", choices=("random", "kmeans++")),
    Param("local_lloyd_max_iter", int, 300, low=1),
    Param("local_lloyd_num_trials", str, "auto"),
    Param("local_lloyd_tol", float, 0.0001, low=0, high=1),
    # the SageMaker Python SDK's KMeans estimator always sends force_dense=True
    Param("force_dense", bool, True),
)

SPEC = AlgorithmSpec(
    name="kmeans",
    repositories=("kmeans",),
    params=_PARAMS,
    train="salvia.algorithms.kmeans:train",
    channels=("train", "test"),
    metrics=(
        quality_metric("test", "msd"),
        quality_metric("test", "ssd"),
        quality_metric("train", "msd"),
        ("train:progress", r"#progress_metric: host=\S+, completed (\S+) % of epochs"),
    ),
    inference="salvia.algorithms.kmeans",
)


def train() -> None:
    run_training(SPEC, _train)


# ---------------------------------------------------------------------------------- helpers


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d2 = (
        np.einsum("ij,ij->i", points, points)[:, None]
        - 2.0 * points @ centers.T
        + np.einsum("ij,ij->i", centers, centers)[None, :]
    )
    return np.maximum(d2, 0.0)


def _closest(points: np.ndarray, centers: np.ndarray, chunk: int = 4096) -> tuple[Any, Any]:
    """Index of the closest center and the squared distance to it, row by row."""
    index = np.empty(len(points), dtype=np.int64)
    dist2 = np.empty(len(points))
    for start in range(0, len(points), chunk):
        d2 = _squared_distances(points[start : start + chunk], centers)
        best = np.argmin(d2, axis=1)
        index[start : start + chunk] = best
        dist2[start : start + chunk] = d2[np.arange(len(best)), best]
    return index, dist2


# ---------------------------------------------------------------------------------- training


def _kmeans_pp(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """k-means++ seeding on weighted points (D^2 weighting times the point weights)."""
    chosen = [int(rng.choice(len(points), p=weights / weights.sum()))]
    closest = _squared_distances(points, points[chosen])[:, 0]
    for _ in range(1, k):
        mass = closest * weights
        total = mass.sum()
        if total <= 0:  # fewer distinct points than k
            index = int(rng.integers(len(points)))
        else:
            index = int(rng.choice(len(points), p=mass / total))
        chosen.append(index)
        closest = np.minimum(closest, _squared_distances(points, points[[index]])[:, 0])
    return points[chosen].copy()


def _initial_centers(
    points: np.ndarray, weights: np.ndarray, k: int, method: str, rng: np.random.Generator
) -> np.ndarray:
    if method == "kmeans++":
        return _kmeans_pp(points, weights, k, rng)
    positive = np.flatnonzero(weights > 0)
    take = rng.choice(positive, size=k, replace=len(positive) < k, p=None)
    return points[take].copy()


def local_lloyd(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    *,
    init: str,
    max_iter: int,
    tol: float,
    trials: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Weighted Lloyd's EM from `trials` initializations; the centers with the lowest loss."""
    best: tuple[np.ndarray, float] | None = None
    for _ in range(trials):
        centers = _initial_centers(points, weights, k, init, rng)
        previous = math.inf
        for _ in range(max_iter):
            assign, dist2 = _closest(points, centers)
            loss = float(np.dot(weights, dist2))
            mass = np.bincount(assign, weights=weights, minlength=k)
            sums = np.zeros_like(centers)
            np.add.at(sums, assign, points * weights[:, None])
            filled = mass > 0
            centers[filled] = sums[filled] / mass[filled, None]
            if previous < math.inf and previous - loss <= tol * previous:
                break
            previous = loss
        _, dist2 = _closest(points, centers)
        loss = float(np.dot(weights, dist2))
        if best is None or loss < best[1]:
            best = (centers, loss)
    assert best is not None
    return best


def _stream(
    data: np.ndarray, hp: dict[str, Any], num_centers: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mini-batch k-means over `epochs` passes: the centers and the weight each absorbed."""
    batch = int(hp["mini_batch_size"])
    epochs = int(hp["epochs"])
    half_life = int(hp["half_life_time_size"])
    decay = 0.5 ** (1.0 / half_life) if half_life > 0 else 1.0
    order = rng.permutation(len(data))
    first = data[order[: max(batch, num_centers)]]
    centers = _initial_centers(first, np.ones(len(first)), num_centers, hp["init_method"], rng)
    counts = np.zeros(num_centers)
    for epoch in range(epochs):
        if epoch:
            order = rng.permutation(len(data))
        ssd = 0.0
        for start in range(0, len(data), batch):
            rows = data[order[start : start + batch]]
            assign, dist2 = _closest(rows, centers)
            ssd += float(dist2.sum())
            if decay < 1.0:
                counts *= decay ** len(rows)
            seen = np.bincount(assign, minlength=num_centers).astype(np.float64)
            sums = np.zeros_like(centers)
            np.add.at(sums, assign, rows)
            counts += seen
            moved = seen > 0
            centers[moved] += (sums[moved] - seen[moved, None] * centers[moved]) / counts[
                moved, None
            ]
        log_metric("train", "msd", ssd / len(data), "loss")
        percent = 100.0 * (epoch + 1) / epochs
        host = os.environ.get("SM_CURRENT_HOST", "algo-1")
        print(f"#progress_metric: host={host}, completed {percent:g} % of epochs", flush=True)
    return centers, counts


def _train(context: TrainingContext, hp: dict[str, Any]) -> None:
    k, feature_dim = int(hp["k"]), int(hp["feature_dim"])
    metrics = parse_metric_list("eval_metrics", hp["eval_metrics"], ("msd", "ssd"))
    factor = auto_or_int("extra_center_factor", hp["extra_center_factor"])
    trials = auto_or_int("local_lloyd_num_trials", hp["local_lloyd_num_trials"])
    content_type = context.content_types.get("train")
    data = load_features(
        context.channels["train"], content_type, feature_dim, label_size(content_type)
    )
    if len(data) < k:
        raise AlgorithmError(f"The training data has {len(data)} rows, fewer than k={k}.")
    rng = np.random.default_rng(_SEED)
    if factor is None:  # auto: ten centers per cluster while each keeps ~10 points
        factor = int(max(1, min(10, len(data) // (10 * k))))
    num_centers = min(k * factor, len(data))
    centers, counts = _stream(data, hp, num_centers, rng)
    keep = counts > 0
    points, weights = centers[keep], counts[keep]
    if len(points) < k:  # too few centers took points: top up with data rows
        extra = data[rng.choice(len(data), size=k - len(points), replace=False)]
        points = np.vstack([points, extra])
        weights = np.concatenate([weights, np.full(len(extra), max(weights.min(initial=1), 1))])
    final, loss = local_lloyd(
        points,
        weights,
        k,
        init=hp["local_lloyd_init_method"],
        max_iter=int(hp["local_lloyd_max_iter"]),
        tol=float(hp["local_lloyd_tol"]),
        trials=trials if trials is not None else (10 if k * 10 <= len(points) else 3),
        rng=rng,
    )
    print(f"Finalized {k} centers from {len(points)} weighted centers (loss {loss:.6g}).")
    _, dist2 = _closest(data, final)
    print(f"train ssd {float(dist2.sum()):.6g} msd {float(dist2.mean()):.6g}", flush=True)

    if "test" in context.channels:
        test_type = context.content_types.get("test")
        test = load_features(
            context.channels["test"], test_type, feature_dim, label_size(test_type)
        )
        _, test_dist2 = _closest(test, final)
        if "msd" in metrics:
            log_metric("test", "msd", float(test_dist2.mean()), "loss")
        if "ssd" in metrics:
            log_metric("test", "ssd", float(test_dist2.sum()), "loss")

    context.model_dir.mkdir(parents=True, exist_ok=True)
    meta = {"k": k, "feature_dim": feature_dim}
    np.savez(context.model_dir / MODEL_FILE, centers=final, meta=np.array(json.dumps(meta)))


# ---------------------------------------------------------------------------------- inference


def model_fn(model_dir: str | Path) -> dict[str, Any]:
    with np.load(Path(model_dir) / MODEL_FILE) as archive:
        meta = json.loads(str(archive["meta"]))
        return {"centers": archive["centers"], **meta}


def input_fn(body: bytes | str, content_type: str | None) -> np.ndarray:
    return formats.decode_rows(body, content_type)


def predict_fn(data: np.ndarray, model: dict[str, Any]) -> list[dict[str, Any]]:
    rows = np.asarray(data, dtype=np.float64)
    width = int(model["feature_dim"])
    if rows.ndim != 2 or rows.shape[1] != width:
        raise AlgorithmError(f"The model takes {width} features; the request has {rows.shape}.")
    index, dist2 = _closest(rows, model["centers"])
    return [
        {"closest_cluster": float(c), "distance_to_cluster": float(math.sqrt(d))}
        for c, d in zip(index, dist2, strict=True)
    ]


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    if formats._base(accept, formats.JSON) == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(prediction), formats.RECORDIO
    return formats.encode_predictions(
        prediction, accept, ("closest_cluster", "distance_to_cluster")
    )
