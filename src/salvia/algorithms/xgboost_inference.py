"""Inference of SageMaker's built-in XGBoost algorithm, as aws/sagemaker-xgboost-container's
`algorithm_mode/serve.py` and `serve_utils.py` serve it.

Requests: CSV (no label column, delimiter sniffed, empty cells missing), libsvm (labels
optional, 1-based indices shifted) and RecordIO-protobuf, plus JSON and JSON Lines rows (which
the container refuses). Responses: text/csv one prediction per line (the default Accept, or
SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT), application/json `{"predictions": [{"score": ...}]}`,
JSON Lines and RecordIO-protobuf `{"score": ...}` records (the container answers these two only
with SAGEMAKER_INFERENCE_OUTPUT); SAGEMAKER_INFERENCE_OUTPUT selects `predicted_label`,
`probabilities`, ... as the container does.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salvia.algorithms import formats
from salvia.algorithms.base import AlgorithmError

MODEL_NAME = "xgboost-model"
_THREADED_ROWS = 4096
_BULK_BYTES = 64 * 1024
# the instance's threads (the executor sets OMP_NUM_THREADS from its instance type)
_THREADS = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def csv_rows(text: str | bytes) -> tuple[np.ndarray, str]:
    """Rows of a CSV text (or its UTF-8 bytes) with the delimiter sniffed; empty cells are
    missing values."""
    text = text.strip()
    if not text:
        return np.empty((0, 0)), ","
    first = text[:4096]
    if isinstance(first, bytes):
        first = first.decode("utf-8", "replace")
    head = first[: first.find("\n") if "\n" in first else len(first)][:512]
    if "," in head and not any(other in head for other in ";\t| "):
        delimiter = ","  # what sniffing finds, without its cost (~70 us) on the serving path
    else:
        try:
            delimiter = csv.Sniffer().sniff(head).delimiter
        except csv.Error:
            delimiter = ","
    delimiter = "," if delimiter.isalnum() else delimiter
    try:
        if len(text) > _BULK_BYTES:  # batch transform's megabytes: the C parser, ~20x faster
            import pandas as pd

            # bytes as they came: pandas would encode a str back to UTF-8 to parse it
            source = io.BytesIO(text) if isinstance(text, bytes) else io.StringIO(text)
            frame = pd.read_csv(source, header=None, sep=delimiter, dtype=np.float64,
                                skip_blank_lines=True, engine="c")  # fmt: skip
            return frame.to_numpy(), delimiter
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        lines = [line for line in text.split("\n") if line.strip()]
        rows = [[float(x) if x.strip() else np.nan for x in line.split(delimiter)]
                for line in lines]  # fmt: skip
        return np.array(rows, dtype=np.float64), delimiter
    except ValueError as error:
        raise AlgorithmError(
            f"Loading csv data failed, please ensure data is in csv format: {error}"
        ) from None


_ACCEPTS = (formats.JSON, formats.JSONLINES, formats.RECORDIO, formats.CSV)
# serve_utils.VALID_OBJECTIVES: the keys SAGEMAKER_INFERENCE_OUTPUT may select per objective
_CLASSIFICATION = ("predicted_label", "labels", "raw_score", "raw_scores")
_SELECTABLE = {
    **dict.fromkeys(
        ("reg:squarederror", "reg:logistic", "reg:gamma", "reg:absoluteerror", "reg:tweedie"),
        ("predicted_score",),
    ),
    "binary:logistic": (*_CLASSIFICATION, "probability", "probabilities"),
    "binary:logitraw": _CLASSIFICATION,
    "binary:hinge": _CLASSIFICATION,
    "multi:softmax": _CLASSIFICATION,
    "multi:softprob": (*_CLASSIFICATION, "probability", "probabilities"),
}


@dataclass
class Model:
    boosters: list[Any]
    objective: str
    num_class: str


@dataclass
class Predictions:
    values: np.ndarray
    objective: str
    num_class: str


def model_fn(model_dir: str | Path) -> Model:
    """serve_utils.get_loaded_booster: `xgboost-model` (or a pickled booster); with
    SAGEMAKER_INFERENCE_ENSEMBLE (default true) every model file, e.g. the `_kfold` folds."""
    import pickle
    import warnings

    import xgboost as xgb

    paths = sorted(
        p for p in Path(model_dir).iterdir() if p.is_file() and not p.name.startswith(".")
    )
    paths.sort(key=lambda p: p.name != MODEL_NAME)
    if not paths:
        raise AlgorithmError(f"No model file in {model_dir}.")
    if os.environ.get("SAGEMAKER_INFERENCE_ENSEMBLE", "true") != "true":
        paths = paths[:1]
    boosters = []
    for path in paths:
        raw = path.read_bytes()
        booster = xgb.Booster()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                booster.load_model(bytearray(raw))
        except xgb.core.XGBoostError as error:
            try:  # a booster pickled by a script-mode job, which the container also loads
                booster = pickle.loads(raw)
            except Exception:
                raise AlgorithmError(f"Model {path.name} cannot be loaded: {error}") from None
        booster.set_param("nthread", "1")
        boosters.append(booster)
    config = json.loads(boosters[0].save_config())["learner"]
    num_class = str(config["learner_model_param"].get("num_class", ""))
    return Model(boosters, config["objective"]["name"], num_class)


_DENSE_ROWS = (formats.JSON, formats.JSONLINES, formats.RECORDIO, "application/jsonl")


def _is_csv(content_type: str | None) -> bool:
    return (content_type or formats.CSV).split(";")[0].strip().lower() in ("text/csv", "csv")


def transform_fn(model: Model, body: bytes | str, content_type: str | None,
                 accept: str | None) -> tuple[bytes, str]:  # fmt: skip
    """`output_fn(predict_fn(input_fn(...)))`, as the container composes them, except that CSV
    rows reach the boosters as parsed, without the copy into a DMatrix (a twentieth of a batch
    transform's time). A user's `input_fn`, `predict_fn` or `output_fn` replaces this."""
    base = (content_type or formats.CSV).split(";")[0].strip().lower()
    if _is_csv(content_type):
        data = csv_rows(body)[0]
    elif base in _DENSE_ROWS:
        data = formats.decode_rows(body, base)
    else:
        data = input_fn(body, content_type)
    return output_fn(predict_fn(data, model), accept)


def input_fn(body: bytes | str, content_type: str | None) -> Any:
    """serve_utils.parse_content_data: the request as an `xgboost.DMatrix`."""
    import xgboost as xgb

    base = (content_type or formats.CSV).split(";")[0].strip().lower()
    if _is_csv(content_type):
        rows, _ = csv_rows(body)
        return _dmatrix(rows)
    text = body.decode("utf-8") if isinstance(body, bytes) and base != formats.RECORDIO else body
    if base in ("text/libsvm", "text/x-libsvm", "libsvm"):
        return xgb.DMatrix(_request_libsvm(str(text).strip()))
    if base in _DENSE_ROWS:
        return xgb.DMatrix(formats.decode_rows(body, base))
    raise AlgorithmError(f"Content-type {content_type} is not supported.")


def _dmatrix(rows: np.ndarray) -> Any:
    import xgboost as xgb

    # threads only pay off for big batches (and no more than the instance gives this worker:
    # -1 would take every core, over the other workers); for a few rows they cost more than
    # they save
    return xgb.DMatrix(rows, nthread=1 if len(rows) < _THREADED_ROWS else _THREADS)


def _request_libsvm(text: str) -> Any:
    """serve_utils._get_sparse_matrix_from_libsvm: labels optional, 1-based indices shifted."""
    from scipy.sparse import csr_matrix

    rows, cols, values = [], [], []
    for row, line in enumerate(text.split("\n")):
        for item in line.split(" "):
            if ":" in item:
                index, value = item.split(":")[:2]
                rows.append(row)
                cols.append(int(index))
                values.append(float(value))
    col = np.array(cols, dtype=int)
    if col.size and col.min() >= 1:
        col = col - 1
    return csr_matrix((np.array(values, dtype=float), (np.array(rows, dtype=int), col)))


def predict_fn(data: Any, model: Model) -> Predictions:
    """serve_utils.predict: one booster, or the ensemble's vote (softmax, hinge) or mean. `data`:
    a DMatrix, or rows as an array (`transform_fn`'s)."""
    if isinstance(data, np.ndarray):
        direct = data.shape[0] > 0 and all(
            b.num_features() == data.shape[1] for b in model.boosters
        )  # else a DMatrix, which also takes fewer columns than the model (the rest missing)
        if not direct:
            data = _dmatrix(data)
    rows = data.shape[0] if isinstance(data, np.ndarray) else data.num_row()
    threads = _THREADS if rows >= _THREADED_ROWS else 1
    try:
        for booster in model.boosters:
            booster.set_param("nthread", threads)
        if isinstance(data, np.ndarray):
            outputs = [b.inplace_predict(data, validate_features=False) for b in model.boosters]
        else:
            outputs = [b.predict(data, validate_features=False) for b in model.boosters]
    except Exception as error:  # xgboost's feature-count check and the like
        raise AlgorithmError(f"Unable to evaluate payload provided: {error}") from None
    if len(outputs) == 1:
        values = outputs[0]
    elif model.objective in ("multi:softmax", "binary:hinge"):
        from scipy import stats

        values = stats.mode(np.stack(outputs), axis=0).mode
    else:
        values = np.mean(outputs, axis=0)
    return Predictions(np.asarray(values), model.objective, model.num_class)


def output_fn(prediction: Predictions, accept: str | None) -> tuple[bytes, str]:
    """serve.py `invocations`: CSV one prediction per line, JSON `{"predictions": [{"score":
    ...}]}`, or the SAGEMAKER_INFERENCE_OUTPUT keys."""
    kind = (accept or "").split(";")[0].strip().lower()
    if not kind or kind == "*/*":
        kind = os.environ.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", formats.CSV)
    if kind not in _ACCEPTS:
        raise AlgorithmError(
            f"Accept type {accept} is not supported. Please use supported accept types: "
            f"{list(_ACCEPTS)}."
        )
    batch = bool(os.environ.get("SAGEMAKER_BATCH"))
    if "SAGEMAKER_INFERENCE_OUTPUT" in os.environ:
        keys = os.environ["SAGEMAKER_INFERENCE_OUTPUT"].replace(" ", "").lower().split(",")
        selected = _selected(prediction, keys)
        return _encode_selected(selected, keys, kind, batch), kind
    if batch and prediction.values.ndim == 1:
        return formats.float_lines(prediction.values), kind
    values = prediction.values.tolist()
    if batch:
        return ("\n".join(map(str, values)) + "\n").encode(), kind
    if kind == formats.CSV:
        rows = [row if isinstance(row, list) else [row] for row in values]
        return "".join(",".join(map(str, row)) + "\n" for row in rows).encode(), kind
    scores = [{"score": value} for value in values]
    if kind == formats.JSON:
        return json.dumps({"predictions": scores}).encode(), kind
    if kind == formats.JSONLINES:
        return "".join(json.dumps(s) + "\n" for s in scores).encode(), kind
    from salvia.algorithms import recordio

    return recordio.encode_predictions(scores), kind


def _selected(prediction: Predictions, keys: list[str]) -> list[dict[str, Any]]:
    """serve_utils.get_selected_predictions."""
    objective, nan = prediction.objective, float("nan")
    if objective not in _SELECTABLE:
        raise AlgorithmError(
            f"Objective `{objective}` unsupported for selectable inference predictions."
        )
    valid = set(_SELECTABLE[objective])
    softprob, logistic = objective == "multi:softprob", objective == "binary:logistic"
    labels: Any = nan
    if objective.startswith("binary:"):
        labels = [0, 1]
    elif objective.startswith("multi:") and prediction.num_class:
        labels = list(range(int(prediction.num_class)))
    results = []
    for raw in prediction.values:
        item = raw.item() if np.ndim(raw) == 0 else nan
        if objective in ("binary:hinge", "multi:softmax"):
            label: Any = item
        elif logistic:
            label = int(item > 0.5)
        elif objective == "binary:logitraw":
            label = int(item > 0)
        else:
            label = int(np.argmax(raw)) if softprob else nan
        winner = float(np.max(raw)) if softprob else item
        pair = [1.0 - item, item] if not softprob else raw.tolist()
        values = {
            "predicted_label": label,
            "labels": labels,
            "probability": winner if (softprob or logistic) else nan,
            "probabilities": pair if (softprob or logistic) else nan,
            "raw_score": winner,
            "raw_scores": pair,
            "predicted_score": item,
        }
        results.append({key: values[key] if key in valid else nan for key in keys})
    return results


def _encode_selected(predictions: list[dict[str, Any]], keys: list[str], kind: str,
                     batch: bool) -> bytes:  # fmt: skip
    """serve_utils.encode_selected_predictions."""
    if kind == formats.JSON:
        return json.dumps({"predictions": predictions}).encode()
    if kind == formats.JSONLINES:
        return "".join(json.dumps(p) + "\n" for p in predictions).encode()
    if kind == formats.RECORDIO:
        from salvia.algorithms import recordio

        return recordio.encode_predictions(predictions)
    lines = [",".join(f'"{p[k]}"' if isinstance(p[k], list) else str(p[k]) for k in keys)
             for p in predictions]  # fmt: skip
    return ("\n".join(lines) + ("\n" if batch else "")).encode()
