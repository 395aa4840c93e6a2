"""Linear Learner: SageMaker's linear models for binary and multiclass classification and
regression, with its hyperparameters, channels, metrics and response formats.

Training follows SageMaker's approach: features (and regression labels) are standardized from a
sample of `num_point_for_scaler` rows, `num_models` models are trained at once by mini-batch
SGD, Adam or RMSprop on the chosen loss (the first with the given learning rate and weight
decay, the others with nearby values), each keeps its best epoch by the validation loss
(early stopping), and the best model is chosen on the validation channel (the training data
without one) by `binary_classifier_model_selection_criteria` for binary classifiers, whose
decision threshold is calibrated for it, or by the loss otherwise.

The model artifact is `linear-learner-model.npz` (not SageMaker's MXNet format): the weights
`W` (features x outputs) and bias `b` in the raw feature and label space, and a JSON `meta`
with the predictor type, loss and threshold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms._linear_math import (
    BINARY,
    MULTICLASS,
    REGRESSOR,
    _forward,
    _loss,
    _metrics,
    _objective,
    _scores,
    _select,
)
from salvia.algorithms.base import (
    AlgorithmError,
    AlgorithmSpec,
    Param,
    TrainingContext,
    log_metric,
    quality_metric,
    run_training,
)

MODEL_FILE = "linear-learner-model.npz"
_LOSSES = {
    BINARY: ("logistic", "hinge_loss"),
    MULTICLASS: ("softmax_loss", "logistic", "hinge_loss"),
    REGRESSOR: tuple(
        [
            "squared_loss",
            "absolute_loss",
            "eps_insensitive_squared_loss",
            "eps_insensitive_absolute_loss",
            "quantile_loss",
            "huber_loss",
        ]
    ),
}
_CRITERIA = tuple(
    [
        "accuracy",
        "f1",
        "f_beta",
        "precision_at_target_recall",
        "recall_at_target_precision",
        "cross_entropy_loss",
        "loss_function",
    ]
)

_PARAMS = (
    Param("predictor_type", str, choices=(BINARY, MULTICLASS, REGRESSOR)),
    Param("num_classes", int, None, low=3, high=1_000_000),
    Param("feature_dim", str, "auto"),
    Param("mini_batch_size", int, 1000, low=1),
    Param("epochs", int, 15, low=1),
    Param("accuracy_top_k", int, 3, low=1, high=1_000_000),
    Param("balance_multiclass_weights", bool, False),
    Param("beta_1", str, "auto"),
    Param("beta_2", str, "auto"),
    Param("bias_lr_mult", str, "auto"),
    Param("bias_wd_mult", str, "auto"),
    Param("binary_classifier_model_selection_criteria", str, "accuracy", choices=_CRITERIA),
    Param("early_stopping_patience", int, 3, low=1),
    Param("early_stopping_tolerance", float, 0.001, low=0),
    Param("f_beta", float, 1.0, low=0),
    Param("huber_delta", float, 1.0, low=0),
    Param("init_bias", float, 0.0),
    Param("init_method", str, "uniform", choices=("uniform", "normal")),
    Param("init_scale", float, 0.07, low=0),
    Param("init_sigma", float, 0.01, low=0),
    Param("l1", str, "auto"),
    Param("learning_rate", str, "auto"),
    Param(
        "loss",
        str,
        "auto",
        choices=("auto", *dict.fromkeys(n for v in _LOSSES.values() for n in v)),
    ),
    Param("loss_insensitivity", float, 0.01, low=0),
    Param("lr_scheduler_factor", str, "auto"),
    Param("lr_scheduler_minimum_lr", str, "auto"),
    Param("lr_scheduler_step", str, "auto"),
    Param("margin", float, 1.0, low=0),
    Param("momentum", str, "auto"),
    Param("normalize_data", str, "true"),
    Param("normalize_label", str, "auto"),
    Param("num_calibration_samples", str, "auto"),
    Param("num_models", str, "auto"),
    Param("num_point_for_scaler", int, 10000, low=1),
    Param("optimizer", str, "auto", choices=("auto", "sgd", "adam", "rmsprop")),
    Param("positive_example_weight_mult", str, "1.0"),
    Param("quantile", float, 0.5, low=0, high=1),
    Param("target_precision", float, 0.8, low=0, high=1),
    Param("target_recall", float, 0.8, low=0, high=1),
    Param("unbias_data", str, "auto"),
    Param("unbias_label", str, "auto"),
    Param("use_bias", bool, True),
    Param("use_lr_scheduler", bool, True),
    Param("wd", str, "auto"),
)
_CHANNEL_METRICS = tuple(
    [
        "objective_loss",
        "binary_classification_accuracy",
        "binary_f_beta",
        "precision",
        "recall",
        "roc_auc_score",
        "multiclass_accuracy",
        "multiclass_top_k_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f_beta",
        "dcg",
        "mse",
        "rmse",
        "absolute_loss",
    ]
)

_LOSS_METRICS = {"objective_loss", "mse", "rmse", "absolute_loss"}

SPEC = AlgorithmSpec(
    name="linear-learner",
    repositories=("linear-learner",),
    params=_PARAMS,
    train="salvia.algorithms.linear_learner:train",
    channels=("train", "validation", "test"),
    content_types=("text/csv", "application/x-recordio-protobuf"),
    metrics=(
        quality_metric("train", "objective_loss"),
        *(quality_metric(c, m) for c in ("validation", "test") for m in _CHANNEL_METRICS),
    ),
    inference="salvia.algorithms.linear_learner",
)


def train() -> None:
    run_training(SPEC, _train)


# ------------------------------------------------------------------- hyperparameters


def _auto_number(
    hp: dict[str, Any],
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    strict: bool = False,
) -> float | None:
    """A hyperparameter that is `auto` (None) or a number in its documented range."""
    text = str(hp[name]).strip()
    if text.lower() == "auto":
        return None
    try:
        value = float(text)
        if not math.isfinite(value) or (integer and not value.is_integer()):
            raise ValueError(text)
    except ValueError:
        kind = "integer" if integer else "number"
        raise AlgorithmError(
            f"Hyperparameter {name}: '{text}' is not 'auto' or a {kind}."
        ) from None
    if low is not None and (value < low or (strict and value == low)):
        raise AlgorithmError(f"Hyperparameter {name}: {value} must be above {low}.")
    if high is not None and value >= high:
        raise AlgorithmError(f"Hyperparameter {name}: {value} must be below {high}.")
    return value


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _tristate(hp: dict[str, Any], name: str) -> bool | None:
    text = str(hp[name]).strip().lower()
    if text == "auto":
        return None
    if text in {"true", "1"}:
        return True
    if text in {"false", "0"}:
        return False
    raise AlgorithmError(f"Hyperparameter {name}: '{hp[name]}' is not one of auto, true, false.")


def _settings(hp: dict[str, Any]) -> dict[str, Any]:
    """Resolve `auto` values and check what depends on the predictor type."""
    kind = hp["predictor_type"]
    if kind == MULTICLASS and hp["num_classes"] is None:
        raise AlgorithmError(
            "Hyperparameter num_classes is required by linear-learner when predictor_type is "
            "multiclass_classifier."
        )
    loss = hp["loss"]
    if loss == "auto":
        loss = {BINARY: "logistic", MULTICLASS: "softmax_loss", REGRESSOR: "squared_loss"}[kind]
    if loss not in _LOSSES[kind]:
        raise AlgorithmError(
            f"Hyperparameter loss: {loss} cannot be used with predictor_type {kind} "
            f"(allowed: auto, {', '.join(_LOSSES[kind])})."
        )
    unit = ("quantile", "target_precision", "target_recall")
    positive = ("early_stopping_tolerance", "f_beta", "init_scale", "init_sigma")
    for name in (*positive, "loss_insensitivity", *unit):
        if hp[name] <= 0 or (name in unit and hp[name] >= 1):
            raise AlgorithmError(f"Hyperparameter {name}: {hp[name]} is out of range.")
    optimizer = "adam" if hp["optimizer"] == "auto" else hp["optimizer"]
    weight_text = str(hp["positive_example_weight_mult"]).strip().lower()
    positive_weight: float | str = weight_text
    if weight_text not in {"auto", "balanced"}:
        positive_weight = _or(
            _auto_number(hp, "positive_example_weight_mult", low=0, strict=True), 1
        )
    feature_dim = _auto_number(hp, "feature_dim", integer=True, low=1)
    return {
        "kind": kind,
        "loss": loss,
        "classes": hp["num_classes"] if kind == MULTICLASS else 2,
        "optimizer": optimizer,
        "lr": _auto_number(hp, "learning_rate", low=0, strict=True),
        "wd": _auto_number(hp, "wd", low=0),
        "l1": _or(_auto_number(hp, "l1", low=0), 0.0),
        "momentum": _or(_auto_number(hp, "momentum", low=0, high=1), 0.0),
        "beta_1": _or(_auto_number(hp, "beta_1", low=0, high=1), 0.9),
        "beta_2": _or(_auto_number(hp, "beta_2", low=0, high=1), 0.999),
        "bias_lr_mult": _or(_auto_number(hp, "bias_lr_mult", low=0, strict=True), 1.0),
        "bias_wd_mult": _or(_auto_number(hp, "bias_wd_mult", low=0), 0.0),
        "scheduler_step": _auto_number(hp, "lr_scheduler_step", integer=True, low=1),
        "scheduler_factor": _or(
            _auto_number(hp, "lr_scheduler_factor", low=0, high=1, strict=True), 0.99
        ),
        "scheduler_min_lr": _or(
            _auto_number(hp, "lr_scheduler_minimum_lr", low=0, strict=True), 1e-5
        ),
        "num_models": int(_or(_auto_number(hp, "num_models", integer=True, low=1), 16)),
        "calibration": _auto_number(hp, "num_calibration_samples", integer=True, low=1),
        "feature_dim": None if feature_dim is None else int(feature_dim),
        "positive_weight": positive_weight,
        "normalize_data": _tristate(hp, "normalize_data") is not False,
        "normalize_label": _tristate(hp, "normalize_label"),
        "unbias_data": _tristate(hp, "unbias_data"),
        "unbias_label": _tristate(hp, "unbias_label"),
    }


# ------------------------------------------------------------------------- training


def _prepare(context: TrainingContext, s: dict[str, Any]) -> dict[str, Any]:
    from salvia.algorithms.data import load

    sets = {}
    for name, directory in context.channels.items():
        data = load(directory, context.content_types.get(name))
        if data.labels is None or not np.isfinite(data.labels).all():
            raise AlgorithmError(f"Channel {name} needs a numeric label for every record.")
        labels = data.labels
        if s["kind"] == BINARY and not np.isin(labels, (0, 1)).all():
            raise AlgorithmError(f"Channel {name}: binary_classifier labels must be 0 or 1.")
        if s["kind"] == MULTICLASS and (
            not np.equal(np.mod(labels, 1), 0).all()
            or labels.min() < 0
            or labels.max() >= s["classes"]
        ):
            raise AlgorithmError(
                f"Channel {name}: multiclass_classifier labels must be integers from 0 to "
                f"num_classes - 1 ({s['classes'] - 1})."
            )
        sets[name] = (data.features, labels)
    width = max(features.shape[1] for features, _ in sets.values())
    if s["feature_dim"] is not None:
        if width > s["feature_dim"]:
            raise AlgorithmError(
                f"Hyperparameter feature_dim: the data has {width} features, more than "
                f"{s['feature_dim']}."
            )
        width = s["feature_dim"]
    for name, (features, labels) in sets.items():
        if features.shape[1] != width:
            if not hasattr(features, "tocsr"):
                raise AlgorithmError(
                    f"Channel {name} has {features.shape[1]} features; expected {width}."
                )
            features = features.tocsr()
            features.resize((features.shape[0], width))
        sets[name] = (features, labels)
    return sets


def _scaler(x: Any, y: np.ndarray, s: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = rng.permutation(x.shape[0])[: hp["num_point_for_scaler"]]
    sample = x[rows]
    sparse = hasattr(sample, "tocsr")
    mean = np.asarray(sample.mean(axis=0)).ravel()
    square = sample.multiply(sample) if sparse else sample * sample
    std = np.sqrt(np.maximum(np.asarray(square.mean(axis=0)).ravel() - mean**2, 0))
    unbias = s["unbias_data"] if s["unbias_data"] is not None else hp["use_bias"]
    if sparse and unbias:
        print("unbias_data is not applied to sparse data (it would make it dense).", flush=True)
    scale = np.where(std > 1e-12, std, 1.0) if s["normalize_data"] else np.ones_like(mean)
    center = mean if unbias and not sparse else np.zeros_like(mean)
    y_mean, y_scale = 0.0, 1.0
    if s["kind"] == REGRESSOR:
        if s["unbias_label"] if s["unbias_label"] is not None else hp["use_bias"]:
            y_mean = float(y[rows].mean())
        if s["normalize_label"] is not False:
            spread = float(y[rows].std())
            y_scale = spread if spread > 1e-12 else 1.0
    return {"center": center, "scale": scale, "y_mean": y_mean, "y_scale": y_scale}


def _transform(x: Any, scaler: dict[str, Any]) -> Any:
    if hasattr(x, "tocsr"):
        from scipy import sparse

        return (x @ sparse.diags(1.0 / scaler["scale"])).tocsr()
    return (np.asarray(x) - scaler["center"]) / scaler["scale"]


def _candidates(s: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Learning rate and weight decay of each model: the given (or default) pair first."""
    base_lr = s["lr"] or {"adam": 0.01, "rmsprop": 0.01, "sgd": 0.1}[s["optimizer"]]
    base_wd = s["wd"] if s["wd"] is not None else 1e-4
    lr_factors = (1, 10, 0.1, 3, 0.3, 30, 0.03) if s["lr"] is None else (1, 3, 0.3, 2, 0.5)
    wd_factors = (1, 0, 10, 100) if s["wd"] is None else (1, 0.5, 2)
    pairs = [(base_lr * f, base_wd * g) for g in wd_factors for f in lr_factors]
    pairs = sorted(pairs, key=lambda p: (p[1] != base_wd, p[0] != base_lr))[: s["num_models"]]
    lrs, wds = zip(*pairs, strict=True)
    return np.asarray(lrs), np.asarray(wds)


class _Optimizer:
    def __init__(self, s: dict[str, Any], shape: tuple[int, ...]) -> None:
        self.s = s
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0

    def step(self, grad: np.ndarray, lr: np.ndarray) -> np.ndarray:
        s, self.t = self.s, self.t + 1
        if s["optimizer"] == "adam":
            self.m = s["beta_1"] * self.m + (1 - s["beta_1"]) * grad
            self.v = s["beta_2"] * self.v + (1 - s["beta_2"]) * grad * grad
            m_hat = self.m / (1 - s["beta_1"] ** self.t)
            v_hat = self.v / (1 - s["beta_2"] ** self.t)
            return np.asarray(lr * m_hat / (np.sqrt(v_hat) + 1e-8))
        if s["optimizer"] == "rmsprop":
            self.v = 0.9 * self.v + 0.1 * grad * grad
            return np.asarray(lr * grad / (np.sqrt(self.v) + 1e-8))
        self.m = s["momentum"] * self.m + lr * grad
        return self.m


def _fit(
    x: Any,
    y: np.ndarray,
    val: tuple[Any, np.ndarray] | None,
    s: dict[str, Any],
    hp: dict[str, Any],
    scaler: dict[str, Any],
) -> dict[str, Any]:
    """Train the models; return each one's weights and bias at its best epoch."""
    rng = np.random.default_rng(0)
    n, d = x.shape
    k = s["classes"] if s["kind"] == MULTICLASS else 1
    lrs, wds = _candidates(s)
    models = len(lrs)
    if hp["init_method"] == "uniform":
        w = rng.uniform(-hp["init_scale"], hp["init_scale"], (d, models, k))
    else:
        w = rng.normal(0, hp["init_sigma"], (d, models, k))
    b = np.full((models, k), hp["init_bias"] if hp["use_bias"] else 0.0)
    y_fit = (y - scaler["y_mean"]) / scaler["y_scale"] if s["kind"] == REGRESSOR else y
    weights = _row_weights(y, s, hp)
    opt_w, opt_b = _Optimizer(s, w.shape), _Optimizer(s, b.shape)
    batch = hp["mini_batch_size"]
    steps = s["scheduler_step"] or max(1, 10 * math.ceil(n / batch))
    best_loss = np.full(models, np.inf)
    best_w, best_b = w.copy(), b.copy()
    stale, update = 0, 0
    lr = lrs.copy()
    for epoch in range(hp["epochs"]):
        order = rng.permutation(n)
        total = np.zeros(models)
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            xb = x[rows]
            z = np.asarray(xb @ w.reshape(d, -1)).reshape(len(rows), models, k) + b
            value, grad = _loss(z, y_fit[rows], s, hp, scaler["y_scale"])
            total += (value * weights[rows, None]).sum(axis=0)
            g = grad * (weights[rows, None, None] / weights[rows].sum())
            gw = np.asarray(xb.T @ g.reshape(len(rows), -1)).reshape(d, models, k)
            gw += wds[None, :, None] * w
            w -= opt_w.step(gw, lr[None, :, None])
            if s["l1"]:
                w = np.sign(w) * np.maximum(np.abs(w) - lr[None, :, None] * s["l1"], 0)
            if hp["use_bias"]:
                gb = g.sum(axis=0) + s["bias_wd_mult"] * wds[:, None] * b
                b -= opt_b.step(gb, lr[:, None] * s["bias_lr_mult"])
            update += 1
            if hp["use_lr_scheduler"] and update % steps == 0:
                lr = np.maximum(lr * s["scheduler_factor"], s["scheduler_min_lr"])
        train_loss = total / weights.sum()
        log_metric("train", "objective_loss", float(train_loss.min()), "loss")
        if val is not None:
            epoch_loss = _objective(_forward(val[0], w, b), val[1], s, hp, scaler)
            log_metric("validation", "objective_loss", float(epoch_loss.min()), "loss")
        else:
            epoch_loss = train_loss
        print(f"Epoch {epoch}: best model loss {epoch_loss.min():.6g}", flush=True)
        improved = epoch_loss < best_loss * (1 - hp["early_stopping_tolerance"])
        better = epoch_loss < best_loss
        best_w[:, better], best_b[better] = w[:, better], b[better]
        best_loss = np.minimum(best_loss, epoch_loss)
        stale = 0 if improved.any() else stale + 1
        if stale >= hp["early_stopping_patience"]:
            print(f"Early stopping after epoch {epoch}: no model improved.", flush=True)
            break
    return {"w": best_w, "b": best_b, "lrs": lrs, "wds": wds}


def _row_weights(y: np.ndarray, s: dict[str, Any], hp: dict[str, Any]) -> np.ndarray:
    weights = np.ones(len(y))
    if s["kind"] == BINARY:
        positives = max(float((y == 1).sum()), 1.0)
        mult = s["positive_weight"]
        if mult in ("auto", "balanced"):
            mult = max(float((y == 0).sum()), 1.0) / positives
        weights[y == 1] = float(mult)
    elif s["kind"] == MULTICLASS and hp["balance_multiclass_weights"]:
        counts = np.bincount(y.astype(int), minlength=s["classes"]).astype(float)
        weights = len(y) / (s["classes"] * np.maximum(counts, 1))[y.astype(int)]
    return weights


def _train(context: TrainingContext, hp: dict[str, Any]) -> None:
    s = _settings(hp)
    sets = _prepare(context, s)
    x_raw, y = sets["train"]
    scaler = _scaler(x_raw, y, s, hp)
    x = _transform(x_raw, scaler)
    val = None
    if "validation" in sets:
        val = (_transform(sets["validation"][0], scaler), sets["validation"][1])
    fit = _fit(x, y, val, s, hp, scaler)
    chosen, threshold = _select(fit, *(val if val is not None else (x, y)), s, hp, scaler)
    print(
        f"Selected model {chosen} (learning_rate={fit['lrs'][chosen]:.4g}, "
        f"wd={fit['wds'][chosen]:.4g}); threshold {threshold:.4g}",
        flush=True,
    )
    # fold the scaling into raw-space weights: z = x @ W + b
    w = fit["w"][:, chosen, :] / scaler["scale"][:, None]
    b = fit["b"][chosen] - scaler["center"] @ w
    if s["kind"] == REGRESSOR:
        w, b = w * scaler["y_scale"], b * scaler["y_scale"] + scaler["y_mean"]
    model = {"W": w, "b": b, "threshold": threshold, "settings": s}
    for channel in ("validation", "test"):
        if channel in sets:
            features, labels = sets[channel]
            for name, value in _metrics(model, features, labels, hp).items():
                log_metric(channel, name, value, "loss" if name in _LOSS_METRICS else "score")
    context.model_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "predictor_type": s["kind"],
        "loss": s["loss"],
        "threshold": threshold,
        "num_classes": s["classes"],
        "feature_dim": int(w.shape[0]),
    }
    np.savez(context.model_dir / MODEL_FILE, W=w, b=b, meta=np.asarray(json.dumps(meta)))


# ------------------------------------------------------------------------ inference


def model_fn(model_dir: str | Path) -> dict[str, Any]:
    with np.load(Path(model_dir) / MODEL_FILE) as archive:
        meta = json.loads(str(archive["meta"]))
        return {"W": archive["W"], "b": archive["b"], **meta}


def input_fn(body: bytes | str, content_type: str | None) -> Any:
    if formats._base(content_type, formats.CSV) == formats.RECORDIO:
        from salvia.algorithms import recordio

        raw = body if isinstance(body, bytes) else body.encode()
        features, _ = recordio.read_dataset_bytes(raw)
        return features
    return formats.decode_rows(body, content_type)


def predict_fn(data: Any, model: dict[str, Any]) -> list[dict[str, Any]]:
    width = int(model["feature_dim"])
    if hasattr(data, "tocsr") and data.shape[1] <= width:
        data = data.tocsr().astype(np.float64)
        data.resize((data.shape[0], width))
    elif data.shape[1] != width:
        raise AlgorithmError(f"The model takes {width} features; the request has {data.shape[1]}.")
    z = np.asarray(data @ model["W"] + model["b"])
    kind = model["predictor_type"]
    s = {"kind": kind, "loss": model["loss"]}
    scores = _scores(z, s)
    if kind == BINARY:
        return [
            {"score": float(p), "predicted_label": int(p >= model["threshold"])} for p in scores
        ]
    if kind == MULTICLASS:
        return [
            {"score": [float(v) for v in row], "predicted_label": int(np.argmax(row))}
            for row in scores
        ]
    return [{"score": float(v)} for v in scores]


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> tuple[bytes, str]:
    if formats._base(accept, formats.JSON) == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(prediction), formats.RECORDIO
    labeled = bool(prediction) and "predicted_label" in prediction[0]
    columns = ("predicted_label", "score") if labeled else ("score",)
    return formats.encode_predictions(prediction, accept, columns)
