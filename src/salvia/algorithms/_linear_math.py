"""The numerical core of Linear Learner: its losses and score functions, and choosing the best
of the models trained at once (decision threshold, selection criteria, metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np

BINARY, MULTICLASS, REGRESSOR = "binary_classifier", "multiclass_classifier", "regressor"

# ---------------------------------------------------------------------------- losses


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def _loss(
    z: np.ndarray, y: np.ndarray, s: dict[str, Any], hp: dict[str, Any], label_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss (rows x models) and its gradient by z (rows x models x outputs).
    `z` is rows x models x outputs; regression losses' widths scale with the labels."""
    loss = s["loss"]
    if s["kind"] == REGRESSOR:
        r = z[..., 0] - y[:, None]
        a = np.abs(r)
        eps, delta = hp["loss_insensitivity"] / label_scale, hp["huber_delta"] / label_scale
        if loss == "squared_loss":
            value, grad = r * r, 2 * r
        elif loss == "absolute_loss":
            value, grad = a, np.sign(r)
        elif loss == "eps_insensitive_squared_loss":
            excess = np.maximum(a - eps, 0)
            value, grad = excess**2, 2 * excess * np.sign(r)
        elif loss == "eps_insensitive_absolute_loss":
            value, grad = np.maximum(a - eps, 0), np.sign(r) * (a > eps)
        elif loss == "quantile_loss":
            q = hp["quantile"]
            value = np.where(r < 0, -q * r, (1 - q) * r)
            grad = np.where(r < 0, -q, 1 - q)
        else:  # huber_loss
            value = np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
            grad = np.where(a <= delta, r, delta * np.sign(r))
        return value, grad[..., None]
    if s["kind"] == BINARY:
        target = y[:, None, None]
    else:
        target = np.zeros((len(y), 1, z.shape[-1]))
        target[np.arange(len(y)), 0, y.astype(int)] = 1.0
    if loss == "softmax_loss":
        p = _softmax(z)
        picked = np.take_along_axis(p, y.astype(int)[:, None, None], axis=-1)[..., 0]
        return -np.log(np.maximum(picked, 1e-15)), p - target
    if loss == "logistic":
        value = np.logaddexp(0, z) - target * z
        return value.sum(axis=-1), _sigmoid(z) - target
    sign = 2 * target - 1  # hinge_loss
    slack = hp["margin"] - sign * z
    return np.maximum(slack, 0).sum(axis=-1), -sign * (slack > 0)


def _scores(z: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """Binary: the positive probability; multiclass: class probabilities; else the value."""
    if s["kind"] == BINARY:
        return _sigmoid(z[..., 0])
    if s["kind"] == MULTICLASS:
        if s["loss"] == "softmax_loss":
            return _softmax(z)
        p = _sigmoid(z)
        return np.asarray(p / p.sum(axis=-1, keepdims=True))
    return z[..., 0]


def _forward(x: Any, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    d, models, k = w.shape
    return np.asarray(x @ w.reshape(d, -1)).reshape(x.shape[0], models, k) + b


def _objective(
    z: np.ndarray, y: np.ndarray, s: dict[str, Any], hp: dict[str, Any], scaler: dict[str, Any]
) -> np.ndarray:
    """Mean loss per model, for regression in the labels' own scale."""
    if s["kind"] == REGRESSOR:
        z = z * scaler["y_scale"] + scaler["y_mean"]
    value, _ = _loss(z, y, s, hp)
    return np.asarray(value.mean(axis=0))


# ------------------------------------------------------------ selection and metrics


def _threshold(
    score: np.ndarray, y: np.ndarray, s: dict[str, Any], hp: dict[str, Any]
) -> tuple[float, float]:
    """The decision threshold that is best by the selection criterion, and its value."""
    criterion = hp["binary_classifier_model_selection_criteria"]
    order = np.argsort(-score, kind="stable")
    ranked, truth = score[order], y[order]
    tp = np.cumsum(truth == 1)
    fp = np.cumsum(truth == 0)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # cut only between distinct scores
    tp, fp = np.r_[0, tp[last]], np.r_[0, fp[last]]
    cuts = np.r_[ranked[0] + 1e-9, ranked[last]]
    nxt = np.r_[ranked[last], ranked[-1] - 1e-9]
    thresholds = (cuts + nxt) / 2  # predict positive when score >= threshold
    positives, n = max(int((y == 1).sum()), 1), len(y)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives
    if criterion == "accuracy":
        values = (tp + (n - positives - fp)) / n
    elif criterion in ("f1", "f_beta"):
        beta2 = 1.0 if criterion == "f1" else hp["f_beta"] ** 2
        values = (1 + beta2) * precision * recall / np.maximum(beta2 * precision + recall, 1e-12)
    elif criterion == "precision_at_target_recall":
        values = np.where(recall >= hp["target_recall"], precision, -1 + recall)
    elif criterion == "recall_at_target_precision":
        values = np.where(precision >= hp["target_precision"], recall, -1 + precision)
    else:  # the loss: the usual threshold, models compared by loss
        return 0.5, float("nan")
    best = int(np.argmax(values))
    return float(thresholds[best]), float(values[best])


def _select(
    fit: dict[str, Any],
    x: Any,
    y: np.ndarray,
    s: dict[str, Any],
    hp: dict[str, Any],
    scaler: dict[str, Any],
) -> tuple[int, float]:
    """The best model on (x, y) and, for binary classifiers, its threshold."""
    z = _forward(x, fit["w"], fit["b"])
    losses = _objective(z, y, s, hp, scaler)
    if s["kind"] != BINARY:
        return int(np.nanargmin(losses)), 0.5
    criterion = hp["binary_classifier_model_selection_criteria"]
    if criterion in ("cross_entropy_loss", "loss_function"):
        return int(np.nanargmin(losses)), 0.5
    limit = int(s["calibration"] or len(y))
    scores = _scores(z[:limit], s)
    results = [_threshold(scores[:, m], y[:limit], s, hp) for m in range(z.shape[1])]
    # best criterion value; ties go to the lower loss
    best = max(range(len(results)), key=lambda m: (results[m][1], -losses[m]))
    return best, results[best][0]


def _metrics(model: dict[str, Any], x: Any, y: np.ndarray, hp: dict[str, Any]) -> dict[str, float]:
    s = model["settings"]
    z = np.asarray(x @ model["W"] + model["b"])[:, None, :]
    value, _ = _loss(z, y, s, hp)
    out = {"objective_loss": float(value.mean())}
    scores = _scores(z, s)[:, 0]
    if s["kind"] == REGRESSOR:
        error = scores - y
        out.update(
            mse=float(np.mean(error**2)),
            rmse=float(np.sqrt(np.mean(error**2))),
            absolute_loss=float(np.mean(np.abs(error))),
        )
    elif s["kind"] == BINARY:
        predicted = scores >= model["threshold"]
        tp = float(np.sum(predicted & (y == 1)))
        precision = tp / max(float(predicted.sum()), 1)
        recall = tp / max(float((y == 1).sum()), 1)
        beta2 = hp["f_beta"] ** 2
        f_beta = (1 + beta2) * precision * recall / max(beta2 * precision + recall, 1e-12)
        out.update(
            binary_classification_accuracy=float(np.mean(predicted == (y == 1))),
            binary_f_beta=f_beta,
            precision=precision,
            recall=recall,
        )
        if 0 < (y == 1).sum() < len(y):
            from scipy.stats import rankdata

            ranks = rankdata(scores)
            positives = float((y == 1).sum())
            negatives = len(y) - positives
            auc = (ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
            out["roc_auc_score"] = float(auc)
    else:
        labels = y.astype(int)
        classes = scores.shape[1]
        predicted = scores.argmax(axis=1)
        rank = (scores > scores[np.arange(len(y)), labels][:, None]).sum(axis=1)
        precisions, recalls, fs = [], [], []
        beta2 = hp["f_beta"] ** 2
        for c in range(classes):
            tp = float(np.sum((predicted == c) & (labels == c)))
            p = tp / max(float((predicted == c).sum()), 1)
            r = tp / max(float((labels == c).sum()), 1)
            precisions.append(p)
            recalls.append(r)
            fs.append((1 + beta2) * p * r / max(beta2 * p + r, 1e-12))
        out.update(
            multiclass_accuracy=float(np.mean(predicted == labels)),
            multiclass_top_k_accuracy=float(np.mean(rank < hp["accuracy_top_k"])),
            macro_precision=float(np.mean(precisions)),
            macro_recall=float(np.mean(recalls)),
            macro_f_beta=float(np.mean(fs)),
            dcg=float(np.mean(1.0 / np.log2(rank + 2))),
        )
    return out
