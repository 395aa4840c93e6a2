"""k-NN: SageMaker's k-nearest-neighbors classifier and regressor with its hyperparameters,
channels, metrics and response formats.

Training follows SageMaker's three steps:
1. Sample: `sample_size` rows drawn uniformly without replacement from the training data (all of
   them when there are fewer), which is what SageMaker's reservoir sampling yields.
2. Reduce dimension (optional): `dimension_reduction_type=sign`, a random projection by a matrix
   of random signs scaled by 1/sqrt(target), or `fjlt`, a fast Johnson-Lindenstrauss transform
   (random signs, a Walsh-Hadamard transform of the zero-padded row, `target` sampled
   coordinates scaled by 1/sqrt(target)); both preserve L2 distances and inner products in
   expectation.
3. Index: an exact (brute-force) search by `index_metric` (`L2`, `INNER_PRODUCT` or `COSINE`).
   `faiss.Flat` is exactly this; `faiss.IVFFlat` and `faiss.IVFPQ` are accepted with their
   parameters checked, but they use the same exact search here (their answers are what those
   approximate indexes approximate).

A classifier predicts the most common label among the k neighbors (ties go to the smallest
label, as scikit-learn's KNeighborsClassifier does), a regressor their mean label. CSV training
data has the label in the first column. The `test` channel gives `test:accuracy` (classifier) or
`test:mse` (regressor).

The model artifact is `knn-model.npz` (not SageMaker's faiss index files): the sampled,
reduced `points`, their `labels`, the `projection` used (if any) and a JSON `meta`.
"""

from __future__ import annotations

import json
import math
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
from salvia.algorithms.features import auto_or_int, label_size

MODEL_FILE = "knn-model.npz"
_SEED = 1
CLASSIFIER, REGRESSOR = "classifier", "regressor"
_METRICS = ("L2", "INNER_PRODUCT", "COSINE")

_PARAMS = (
    Param("feature_dim", int, low=1),
    Param("k", int, low=1),
    Param("predictor_type", str, choices=(CLASSIFIER, REGRESSOR)),
    Param("sample_size", int, low=1),
    Param("dimension_reduction_target", int, None, low=1),
    Param("dimension_reduction_type", str, None, choices=("sign", "fjlt")),
    Param("faiss_index_ivf_nlists", str, "auto"),
    Param("faiss_index_pq_m", int, None, low=1),
    Param("index_metric", str, "L2", choices=_METRICS),
    Param("index_type", str, "faiss.Flat", choices=("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")),
    Param("mini_batch_size", int, 5000, low=1),
)

SPEC = AlgorithmSpec(
    name="knn",
    repositories=("knn",),
    params=_PARAMS,
    train="salvia.algorithms.knn:train",
    channels=("train", "test"),
    metrics=(quality_metric("test", "accuracy"), quality_metric("test", "mse")),
    inference="salvia.algorithms.knn",
)


def train() -> None:
    run_training(SPEC, _train)


# ---------------------------------------------------------------------------------- training


def _check(hp: dict[str, Any]) -> None:
    feature_dim = int(hp["feature_dim"])
    kind, target = hp["dimension_reduction_type"], hp["dimension_reduction_target"]
    if kind is not None:
        if target is None:
            raise AlgorithmError(
                "Hyperparameter dimension_reduction_target is required when "
                "dimension_reduction_type is set."
            )
        if target >= feature_dim:
            raise AlgorithmError(
                f"Hyperparameter dimension_reduction_target: {target} must be less than "
                f"feature_dim ({feature_dim})."
            )
    auto_or_int("faiss_index_ivf_nlists", hp["faiss_index_ivf_nlists"])
    pq_m = hp["faiss_index_pq_m"]
    if hp["index_type"] == "faiss.IVFPQ" and pq_m is not None:
        width = target if kind is not None else feature_dim
        if width % pq_m:
            raise AlgorithmError(
                f"Hyperparameter faiss_index_pq_m: {pq_m} must divide the data dimension ({width})."
            )


def _load(path: Path, content_type: str | None, feature_dim: int) -> tuple[Any, Any]:
    from salvia.algorithms.data import load

    if label_size(content_type, 1) != 1:
        raise AlgorithmError("k-NN needs labeled data: text/csv with label_size=1.")
    dataset = load(path, content_type, labeled=True)
    features = dataset.features
    if hasattr(features, "toarray"):
        features = features.toarray()
    features = np.asarray(features, dtype=np.float64)
    if features.shape[1] != feature_dim:
        raise AlgorithmError(
            f"Channel {path.name} has {features.shape[1]} features but feature_dim is "
            f"{feature_dim}."
        )
    if dataset.labels is None:
        raise AlgorithmError(f"Channel {path.name} has no labels; k-NN needs them.")
    return features, np.asarray(dataset.labels, dtype=np.float64)


def _hadamard(rows: np.ndarray) -> np.ndarray:
    """The (unnormalized) fast Walsh-Hadamard transform of each row; width a power of two."""
    out = rows.copy()
    n, width = out.shape
    h = 1
    while h < width:
        view = out.reshape(n, width // (2 * h), 2, h)
        a, b = view[:, :, 0, :].copy(), view[:, :, 1, :].copy()
        view[:, :, 0, :] = a + b
        view[:, :, 1, :] = a - b
        h *= 2
    return out


def _projection(hp: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    kind, target = hp["dimension_reduction_type"], hp["dimension_reduction_target"]
    width = int(hp["feature_dim"])
    if kind is None:
        return None
    if kind == "sign":
        signs = rng.choice(np.array([-1.0, 1.0]), size=(width, target))
        return {"kind": "sign", "matrix": signs / math.sqrt(target)}
    padded = 1 << max(0, (width - 1).bit_length())
    return {
        "kind": "fjlt",
        "signs": rng.choice(np.array([-1.0, 1.0]), size=width),
        "coordinates": rng.choice(padded, size=target, replace=target > padded),
        "padded": padded,
        "target": target,
    }


def _reduce(rows: np.ndarray, projection: dict[str, Any] | None) -> np.ndarray:
    if projection is None:
        return rows
    if projection["kind"] == "sign":
        return rows @ projection["matrix"]
    padded = np.zeros((len(rows), int(projection["padded"])))
    padded[:, : rows.shape[1]] = rows * projection["signs"]
    mixed = _hadamard(padded)
    return mixed[:, projection["coordinates"]] / math.sqrt(int(projection["target"]))


def _prepare(rows: np.ndarray, metric: str) -> np.ndarray:
    if metric == "COSINE":
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms > 0, norms, 1.0)
    return rows


def _neighbors(
    queries: np.ndarray, points: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (nearest first) and their distances (L2) or similarities (inner product,
    cosine) of each query's k nearest points."""
    k = min(k, len(points))
    chunk = max(1, min(2048, (1 << 24) // max(len(points), 1)))  # ~128 MiB of distances
    indices = np.empty((len(queries), k), dtype=np.int64)
    values = np.empty((len(queries), k))
    squared = np.einsum("ij,ij->i", points, points)
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        product = block @ points.T
        if metric == "L2":
            key = np.maximum(
                np.einsum("ij,ij->i", block, block)[:, None] - 2.0 * product + squared, 0.0
            )
        else:
            key = -product
        if k < len(points):
            part = np.argpartition(key, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(len(points)), key.shape)
        part_keys = np.take_along_axis(key, part, axis=1)
        order = np.argsort(part_keys, axis=1, kind="stable")
        chosen = np.take_along_axis(part, order, axis=1)
        chosen_keys = np.take_along_axis(part_keys, order, axis=1)
        indices[start : start + chunk] = chosen
        values[start : start + chunk] = np.sqrt(chosen_keys) if metric == "L2" else -chosen_keys
    return indices, values


def _predict_labels(neighbor_labels: np.ndarray, kind: str) -> np.ndarray:
    if kind == REGRESSOR:
        return np.asarray(neighbor_labels.mean(axis=1))
    classes, codes = np.unique(neighbor_labels, return_inverse=True)
    codes = codes.reshape(neighbor_labels.shape)
    votes = np.zeros((len(neighbor_labels), len(classes)))
    np.add.at(votes, (np.arange(len(codes))[:, None], codes), 1.0)
    return np.asarray(classes[np.argmax(votes, axis=1)])


def _train(context: TrainingContext, hp: dict[str, Any]) -> None:
    _check(hp)
    feature_dim, k = int(hp["feature_dim"]), int(hp["k"])
    features, labels = _load(
        context.channels["train"], context.content_types.get("train"), feature_dim
    )
    rng = np.random.default_rng(_SEED)
    size = int(hp["sample_size"])
    if len(features) > size:
        keep = np.sort(rng.choice(len(features), size=size, replace=False))
        features, labels = features[keep], labels[keep]
    print(f"Sampled {len(features)} of the training rows for the index.", flush=True)
    projection = _projection(hp, rng)
    metric = hp["index_metric"]
    points = _prepare(_reduce(features, projection), metric)
    model = {
        "points": points,
        "labels": labels,
        "projection": projection,
        "k": k,
        "predictor_type": hp["predictor_type"],
        "index_metric": metric,
        "feature_dim": feature_dim,
    }

    if "test" in context.channels:
        test, truth = _load(
            context.channels["test"], context.content_types.get("test"), feature_dim
        )
        predicted = _predict_labels(_query(test, model)[2], hp["predictor_type"])
        if hp["predictor_type"] == CLASSIFIER:
            log_metric("test", "accuracy", float(np.mean(predicted == truth)))
        else:
            log_metric("test", "mse", float(np.mean((predicted - truth) ** 2)), "loss")

    context.model_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"points": points, "labels": labels}
    if projection is not None:
        arrays.update({f"projection_{n}": v for n, v in projection.items() if n != "kind"})
    meta = {
        "k": k,
        "predictor_type": hp["predictor_type"],
        "index_metric": metric,
        "index_type": hp["index_type"],
        "feature_dim": feature_dim,
        "projection": None if projection is None else projection["kind"],
    }
    np.savez(context.model_dir / MODEL_FILE, meta=np.array(json.dumps(meta)), **arrays)


def _query(rows: np.ndarray, model: dict[str, Any]) -> tuple[Any, Any, Any]:
    width = int(model["feature_dim"])
    if rows.ndim != 2 or rows.shape[1] != width:
        raise AlgorithmError(f"The model takes {width} features; the request has {rows.shape}.")
    queries = _prepare(_reduce(rows, model["projection"]), model["index_metric"])
    indices, values = _neighbors(queries, model["points"], int(model["k"]), model["index_metric"])
    return indices, values, model["labels"][indices]


# ---------------------------------------------------------------------------------- inference


def model_fn(model_dir: str | Path) -> dict[str, Any]:
    with np.load(Path(model_dir) / MODEL_FILE) as archive:
        meta = json.loads(str(archive["meta"]))
        projection = None
        if meta["projection"] is not None:
            projection = {
                name.removeprefix("projection_"): archive[name]
                for name in archive.files
                if name.startswith("projection_")
            }
            projection["kind"] = meta["projection"]
        return {
            **meta,
            "points": archive["points"],
            "labels": archive["labels"],
            "projection": projection,
        }


def input_fn(body: bytes | str, content_type: str | None) -> np.ndarray:
    return formats.decode_rows(body, content_type)


def predict_fn(data: np.ndarray, model: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row's prediction with its neighbors' distances and labels; output_fn keeps these
    only for a verbose Accept."""
    _, values, neighbor_labels = _query(np.asarray(data, dtype=np.float64), model)
    predicted = _predict_labels(neighbor_labels, model["predictor_type"])
    return [
        {
            "predicted_label": float(label),
            "distances": [float(v) for v in distances],
            "labels": [float(v) for v in labels],
        }
        for label, distances, labels in zip(predicted, values, neighbor_labels, strict=True)
    ]


def _verbose(accept: str | None) -> bool:
    for part in (accept or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "verbose":
            return value.strip().lower() in {"true", "1"}
    return False


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    """`{"predictions": [{"predicted_label": ...}]}`; with `verbose=true` in the Accept
    (`application/json; verbose=true`) each also carries `distances` (nearest first) and the
    neighbors' `labels`."""
    if not _verbose(accept):
        prediction = [{"predicted_label": p["predicted_label"]} for p in prediction]
    if formats._base(accept, formats.JSON) == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(prediction), formats.RECORDIO
    return formats.encode_predictions(prediction, accept, ("predicted_label",))
