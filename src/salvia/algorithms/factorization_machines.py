"""Factorization Machines: SageMaker's second-order factorization machine for regression and
binary classification over sparse input, with its hyperparameters, channels (train, test),
input format (RecordIO-protobuf with Float32 tensors only, as SageMaker's), metrics and
response formats.

The model is y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j, trained by mini-batch Adam
on the squared loss (regressor) or the logistic loss (binary_classifier), with separate learning
rates and weight decays for the bias, linear and factor terms. Updates are lazy: only the rows
of `w` and `V` whose features occur in a batch are touched, so a batch costs what its non-zeros
cost, whatever `feature_dim` is.

The model artifact is `factorization-machines-model.npz` (not SageMaker's MXNet format): the
bias `w0`, linear weights `w` (feature_dim), factors `V` (feature_dim x num_factors) and a JSON
`meta` with the predictor type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    channel_files,
    log_metric,
    quality_metric,
    run_training,
)

MODEL_FILE = "factorization-machines-model.npz"
BINARY, REGRESSOR = "binary_classifier", "regressor"
_INIT = ("normal", "uniform", "constant")


def _init_params(term: str, sigma: float) -> tuple[Param, ...]:
    return (
        Param(f"{term}_init_method", str, "normal", choices=_INIT),
        Param(f"{term}_init_scale", float, None, low=0),
        Param(f"{term}_init_sigma", float, sigma, low=0),
        Param(f"{term}_init_value", float, None),
    )


SPEC = AlgorithmSpec(
    name="factorization-machines",
    repositories=("factorization-machines",),
    params=(
        Param("feature_dim", int, low=1),
        Param("num_factors", int, low=1),
        Param("predictor_type", str, choices=(BINARY, REGRESSOR)),
        Param("mini_batch_size", int, 1000, low=1),
        Param("epochs", int, 1, low=1),
        Param("clip_gradient", float, None),
        Param("eps", float, None),
        Param("rescale_grad", float, None),
        Param("bias_lr", float, 0.1, low=0),
        Param("linear_lr", float, 0.001, low=0),
        Param("factors_lr", float, 0.0001, low=0),
        Param("bias_wd", float, 0.01, low=0),
        Param("linear_wd", float, 0.001, low=0),
        Param("factors_wd", float, 0.00001, low=0),
        *_init_params("bias", 0.01),
        *_init_params("linear", 0.01),
        *_init_params("factors", 0.001),
    ),
    train="salvia.algorithms.factorization_machines:train",
    channels=("train", "test"),
    content_types=("application/x-recordio-protobuf",),
    metrics=(
        *(quality_metric(c, "rmse") for c in ("train", "test")),
        *(
            quality_metric(c, m)
            for c in ("train", "test")
            for m in (
                "binary_classification_accuracy",
                "binary_classification_cross_entropy",
                "binary_f_beta",
            )
        ),
    ),
    inference="salvia.algorithms.factorization_machines",
)


def train() -> None:
    run_training(SPEC, _train)


# --------------------------------------------------------------------------- data


def _load(directory: Path, name: str, hp: dict[str, Any]) -> tuple[Any, np.ndarray]:
    from salvia.algorithms import recordio

    files = channel_files(directory)
    if not files:
        raise AlgorithmError(f"Channel {name} has no data files.")
    features, labels = recordio.read_dataset(files)
    if features.dtype != np.float32:
        raise AlgorithmError(
            f"Channel {name}: factorization-machines takes RecordIO-protobuf records with "
            f"Float32 tensors; these hold {features.dtype}."
        )
    if labels is None:
        raise AlgorithmError(f"Channel {name}: every record needs a label.")
    if hp["predictor_type"] == BINARY and not np.isin(labels, (0, 1)).all():
        raise AlgorithmError(f"Channel {name}: binary_classifier labels must be 0 or 1.")
    return _to_width(features, hp["feature_dim"]), labels


def _to_width(features: Any, feature_dim: int) -> Any:
    from scipy import sparse

    matrix = sparse.csr_matrix(features, dtype=np.float64)
    if matrix.shape[1] > feature_dim:
        raise AlgorithmError(
            f"Hyperparameter feature_dim: the data has {matrix.shape[1]} features, more than "
            f"{feature_dim}."
        )
    matrix.resize((matrix.shape[0], feature_dim))
    return matrix


# ---------------------------------------------------------------------------- model


def _init(hp: dict[str, Any], term: str, shape: tuple[int, ...], rng: Any) -> np.ndarray:
    method = hp[f"{term}_init_method"]
    if method == "uniform":
        scale = hp[f"{term}_init_scale"]
        if scale is None:
            raise AlgorithmError(
                f"Hyperparameter {term}_init_scale is required when {term}_init_method is uniform."
            )
        return np.asarray(rng.uniform(-scale, scale, shape))
    if method == "constant":
        value = hp[f"{term}_init_value"]
        if value is None:
            raise AlgorithmError(
                f"Hyperparameter {term}_init_value is required when {term}_init_method is constant."
            )
        return np.full(shape, float(value))
    return np.asarray(rng.normal(0.0, hp[f"{term}_init_sigma"], shape))


def _forward(x: Any, w0: float, w: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The raw outputs and x @ V (reused by the gradient)."""
    xv = np.asarray(x @ v)
    x2v2 = np.asarray(x.multiply(x) @ (v * v))
    z = w0 + np.asarray(x @ w).ravel() + 0.5 * (xv * xv - x2v2).sum(axis=1)
    return z, xv


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


class _Adam:
    """Adam over the rows a batch touches (bias-corrected with the global step)."""

    def __init__(self, shape: tuple[int, ...], lr: float, hp: dict[str, Any]) -> None:
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.lr = lr
        self.eps = hp["eps"] if hp["eps"] is not None else 1e-8
        self.clip = hp["clip_gradient"]

    def step(self, param: np.ndarray, grad: np.ndarray, rows: Any, t: int) -> None:
        if self.clip is not None and self.clip > 0:
            grad = np.clip(grad, -self.clip, self.clip)
        m = 0.9 * self.m[rows] + 0.1 * grad
        v = 0.999 * self.v[rows] + 0.001 * grad * grad
        self.m[rows], self.v[rows] = m, v
        step = self.lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + self.eps)
        param[rows] -= step


def _fit(x: Any, y: np.ndarray, hp: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n, d = x.shape
    k = hp["num_factors"]
    w0 = _init(hp, "bias", (1,), rng)
    w = _init(hp, "linear", (d,), rng)
    v = _init(hp, "factors", (d, k), rng)
    bias_opt = _Adam((1,), hp["bias_lr"], hp)
    linear_opt = _Adam((d,), hp["linear_lr"], hp)
    factors_opt = _Adam((d, k), hp["factors_lr"], hp)
    batch, t = hp["mini_batch_size"], 0
    binary = hp["predictor_type"] == BINARY
    everything = np.zeros(1, dtype=np.int64)
    for epoch in range(hp["epochs"]):
        order = rng.permutation(n)
        for start in range(0, n, batch):
            xb = x[order[start : start + batch]]
            yb = y[order[start : start + batch]]
            cols = np.unique(xb.indices)
            xs = xb[:, cols]  # only the features this batch uses
            vs, ws = v[cols], w[cols]
            z, xv = _forward(xs, float(w0[0]), ws, vs)
            g = (_sigmoid(z) - yb) if binary else 2.0 * (z - yb)
            g = g * (hp["rescale_grad"] if hp["rescale_grad"] is not None else 1.0 / len(yb))
            x2 = xs.multiply(xs)
            grad_w = np.asarray(xs.T @ g).ravel() + hp["linear_wd"] * ws
            grad_v = np.asarray(xs.T @ (g[:, None] * xv))
            grad_v -= vs * np.asarray(x2.T @ g).ravel()[:, None]
            grad_v += hp["factors_wd"] * vs
            t += 1
            bias_opt.step(w0, np.asarray([g.sum()]) + hp["bias_wd"] * w0, everything, t)
            linear_opt.step(w, grad_w, cols, t)
            factors_opt.step(v, grad_v, cols, t)
        model = {"w0": float(w0[0]), "w": w, "V": v, "predictor_type": hp["predictor_type"]}
        for name, value in _metrics(model, x, y).items():
            log_metric("train", name, value, "loss" if "rmse" in name else "score")
        print(f"Epoch {epoch} done ({t} updates).", flush=True)
    return {"w0": float(w0[0]), "w": w, "V": v, "predictor_type": hp["predictor_type"]}


def _metrics(model: dict[str, Any], x: Any, y: np.ndarray) -> dict[str, float]:
    z, _ = _forward(x, model["w0"], model["w"], model["V"])
    if model["predictor_type"] == REGRESSOR:
        return {"rmse": float(np.sqrt(np.mean((z - y) ** 2)))}
    p = np.clip(_sigmoid(z), 1e-12, 1 - 1e-12)
    predicted = p >= 0.5
    tp = float(np.sum(predicted & (y == 1)))
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float((y == 1).sum()), 1.0)
    return {
        "binary_classification_accuracy": float(np.mean(predicted == (y == 1))),
        "binary_classification_cross_entropy": float(
            -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        ),
        "binary_f_beta": 2 * precision * recall / max(precision + recall, 1e-12),
    }


def _train(context: TrainingContext, hp: dict[str, Any]) -> None:
    x, y = _load(context.channels["train"], "train", hp)
    model = _fit(x, y, hp)
    if "test" in context.channels:
        x_test, y_test = _load(context.channels["test"], "test", hp)
        for name, value in _metrics(model, x_test, y_test).items():
            log_metric("test", name, value, "loss" if "rmse" in name else "score")
    context.model_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "predictor_type": hp["predictor_type"],
        "feature_dim": hp["feature_dim"],
        "num_factors": hp["num_factors"],
    }
    np.savez(
        context.model_dir / MODEL_FILE,
        w0=np.asarray(model["w0"]),
        w=model["w"],
        V=model["V"],
        meta=np.asarray(json.dumps(meta)),
    )


# ------------------------------------------------------------------------ inference


def model_fn(model_dir: str | Path) -> dict[str, Any]:
    with np.load(Path(model_dir) / MODEL_FILE) as archive:
        meta = json.loads(str(archive["meta"]))
        return {"w0": float(archive["w0"]), "w": archive["w"], "V": archive["V"], **meta}


def _json_row(item: Any) -> Any:
    """A dense row, or sparse (keys, values, shape) in SageMaker's `data.features` form."""
    if isinstance(item, dict) and isinstance(item.get("data"), dict):
        tensor = item["data"].get("features", {})
        if tensor.get("keys"):
            return (tensor["keys"], tensor.get("values", []), tensor.get("shape", []))
        return tensor.get("values", [])
    if isinstance(item, dict):
        if "features" not in item:
            raise AlgorithmError("A JSON instance needs 'features' or 'data.features'.")
        return item["features"]
    return item


def input_fn(body: bytes | str, content_type: str | None) -> Any:
    """JSON (`{"instances": [...]}`), JSON Lines or RecordIO-protobuf, dense or sparse; a
    CSR matrix. CSV is refused, as SageMaker's factorization machines refuse it."""
    from scipy import sparse

    kind = formats._base(content_type, formats.JSON)
    if kind == formats.RECORDIO:
        from salvia.algorithms import recordio

        features, _ = recordio.read_dataset_bytes(
            body if isinstance(body, bytes) else body.encode()
        )
        return sparse.csr_matrix(features, dtype=np.float64)
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        if kind == formats.JSON:
            payload = json.loads(text)
            items = payload.get("instances", payload) if isinstance(payload, dict) else payload
            if isinstance(items, list) and items and not isinstance(items[0], dict | list):
                items = [items]
        elif kind in {formats.JSONLINES, "application/jsonl", "application/x-jsonlines"}:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raise AlgorithmError(
                f"Content type {kind} is not supported by factorization-machines inference "
                "(use application/json, application/jsonlines or "
                "application/x-recordio-protobuf)."
            )
        rows = [_json_row(item) for item in items]
        indptr, width = [0], 0
        indices: list[int] = []
        values: list[float] = []
        for row in rows:
            if isinstance(row, tuple):
                keys, vals, shape = row
                width = max(width, *(int(s) for s in shape[:1]), max(keys) + 1)
            else:
                keys, vals = list(range(len(row))), row
                width = max(width, len(row))
            indices.extend(int(k) for k in keys)
            values.extend(float(v) for v in vals)
            indptr.append(len(indices))
        return sparse.csr_matrix((values, indices, indptr), shape=(len(rows), width))
    except (ValueError, TypeError) as error:
        raise AlgorithmError(f"The request body is not valid {kind}: {error}") from None


def predict_fn(data: Any, model: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        x = _to_width(data, int(model["feature_dim"]))
    except AlgorithmError:
        raise AlgorithmError(
            f"The model takes {model['feature_dim']} features; the request has {data.shape[1]}."
        ) from None
    z, _ = _forward(x, model["w0"], model["w"], model["V"])
    if model["predictor_type"] == BINARY:
        return [{"score": float(p), "predicted_label": int(p >= 0.5)} for p in _sigmoid(z)]
    return [{"score": float(value)} for value in z]


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    if formats._base(accept, formats.JSON) == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(prediction), formats.RECORDIO
    labeled = bool(prediction) and "predicted_label" in prediction[0]
    columns = ("predicted_label", "score") if labeled else ("score",)
    return formats.encode_predictions(prediction, accept, columns)
