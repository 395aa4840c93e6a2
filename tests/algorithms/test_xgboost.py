"""The built-in XGBoost algorithm trains what the xgboost library trains, logs the metrics
SageMaker's definitions read, and serves the container's response formats."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.metrics import roc_auc_score

from salvia.algorithms import xgboost as algorithm
from tests.algorithms.harness import TrainingRun, run_training

MODULE = "salvia.algorithms.xgboost"


def _csv(rows: np.ndarray) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(y))
    train, valid, test = np.split(order, [int(0.6 * len(y)), int(0.8 * len(y))])
    return x[train], y[train], x[valid], y[valid], x[test], y[test]


def _metric_values(run: TrainingRun, name: str) -> list[float]:
    """The definition's regex over the log as CloudWatch renders it (TAB as `#011`). `(\\S+)`
    runs on over the next `#011` unless the metric ends the line, so the number is its prefix."""
    regex = dict(algorithm.SPEC.metrics)[name]
    lines = run.stdout.replace("\t", "#011").splitlines()
    captured = [m.group(1) for line in lines if (m := re.search(regex, line))]
    return [float(c.split("#011")[0]) for c in captured]


@pytest.fixture(scope="module")
def binary_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    x, y = load_breast_cancer(return_X_y=True)
    x_train, y_train, x_val, y_val, x_test, y_test = _split(x, y)
    hyperparameters = {
        "num_round": 200,
        "objective": "binary:logistic",
        "eta": 0.1,
        "max_depth": 3,
        "subsample": 0.8,
        "seed": 42,
        "eval_metric": "auc,logloss",
        "early_stopping_rounds": 10,
    }
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("xgb-binary"),
        hyperparameters,
        {
            "train": {"train.csv": _csv(np.column_stack([y_train, x_train]))},
            "validation": {"validation.csv": _csv(np.column_stack([y_val, x_val]))},
        },
        {"train": "text/csv", "validation": "text/csv"},
    )
    return {"run": run, "data": (x_train, y_train, x_val, y_val, x_test, y_test)}


def test_binary_training_equals_the_xgboost_library(binary_job: dict[str, Any]) -> None:
    run: TrainingRun = binary_job["run"]
    assert run.returncode == 0, run.log
    assert (run.model_dir / "xgboost-model").is_file()
    x_train, y_train, x_val, y_val, x_test, y_test = binary_job["data"]

    params = {
        "objective": "binary:logistic",
        "eta": 0.1,
        "max_depth": 3,
        "subsample": 0.8,
        "seed": 42,
        "eval_metric": ["auc", "logloss"],
    }
    dtrain = xgb.DMatrix(x_train, label=y_train)
    dval = xgb.DMatrix(x_val, label=y_val)
    stop = xgb.callback.EarlyStopping(
        rounds=10, metric_name="logloss", data_name="validation", save_best=True
    )
    reference = xgb.train(
        params,
        dtrain,
        200,
        evals=[(dtrain, "train"), (dval, "validation")],
        callbacks=[stop],
        verbose_eval=False,
    )

    model = algorithm.model_fn(run.model_dir)
    ours = model.boosters[0].predict(xgb.DMatrix(x_test))
    expected = reference.predict(xgb.DMatrix(x_test))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert model.boosters[0].num_boosted_rounds() == reference.num_boosted_rounds() < 200
    assert roc_auc_score(y_test, ours) > 0.97

    # the log is XGBoost's own, and the container's metric definitions read it
    assert re.search(r"^\[0\]\ttrain-auc:\S+\ttrain-logloss:\S+\tvalidation-auc:", run.stdout, re.M)
    validation_auc = _metric_values(run, "validation:auc")
    assert len(validation_auc) > 10 and validation_auc[-1] > 0.95
    assert _metric_values(run, "train:logloss")[-1] < _metric_values(run, "train:logloss")[0]


def test_spec_is_sagemakers() -> None:
    names = {p.name for p in algorithm.SPEC.params}
    assert {"num_round", "eta", "max_depth", "objective", "eval_metric", "num_class"} <= names
    assert [p.name for p in algorithm.SPEC.params if p.required] == ["num_round"]
    assert not algorithm.SPEC.allow_unknown
    definitions = {d["Name"]: d["Regex"] for d in algorithm.SPEC.metric_definitions()}
    assert definitions["validation:rmse"] == r".*\[[0-9]+\].*#011validation-rmse:(\S+)"
    assert {"validation:auc", "train:mlogloss", "validation:f1", "validation:aucpr"} <= set(
        definitions
    )


def test_binary_inference_formats(binary_job: dict[str, Any]) -> None:
    run: TrainingRun = binary_job["run"]
    x_test = binary_job["data"][4][:3]
    model = algorithm.model_fn(run.model_dir)
    expected = model.boosters[0].predict(xgb.DMatrix(x_test))

    prediction = algorithm.predict_fn(algorithm.input_fn(_csv(x_test).encode(), "text/csv"), model)
    body, content_type = algorithm.output_fn(prediction, None)  # default Accept: text/csv
    assert content_type == "text/csv"
    assert [float(v) for v in body.decode().splitlines()] == pytest.approx(expected, abs=1e-6)

    rows = json.dumps({"instances": [{"features": row.tolist()} for row in x_test]})
    prediction = algorithm.predict_fn(algorithm.input_fn(rows, "application/json"), model)
    body, content_type = algorithm.output_fn(prediction, "application/json")
    assert content_type == "application/json"
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    assert scores == pytest.approx(expected, abs=1e-6)

    body, content_type = algorithm.output_fn(prediction, "application/jsonlines")
    assert [json.loads(line)["score"] for line in body.decode().splitlines()] == pytest.approx(
        expected, abs=1e-6
    )
    libsvm = "\n".join(" ".join(f"{i + 1}:{v}" for i, v in enumerate(row)) for row in x_test)
    prediction = algorithm.predict_fn(algorithm.input_fn(libsvm.encode(), "text/libsvm"), model)
    np.testing.assert_allclose(prediction.values, expected, atol=1e-6)

    with pytest.raises(algorithm.AlgorithmError, match="Accept type"):
        algorithm.output_fn(prediction, "image/png")


def test_the_fused_transform_answers_as_the_three_handlers(
    binary_job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """transform_fn predicts from the parsed rows without a DMatrix; byte for byte what
    input_fn -> predict_fn -> output_fn answer, for every content type and batch or not."""
    model = algorithm.model_fn(binary_job["run"].model_dir)
    x_test = binary_job["data"][4]
    rows = json.dumps({"instances": [{"features": row.tolist()} for row in x_test[:5]]})
    narrow = _csv(x_test[:6, :-1])  # fewer columns than the model: the rest are missing
    libsvm = "\n".join(" ".join(f"{i + 1}:{v}" for i, v in enumerate(r)) for r in x_test[:4])
    requests = [
        (_csv(x_test).encode(), "text/csv", None),
        (_csv(x_test[:1]).encode(), "text/csv", "application/json"),
        (narrow.encode(), "text/csv", "text/csv"),
        (rows.encode(), "application/json", "application/jsonlines"),
        (libsvm.encode(), "text/libsvm", "text/csv"),
    ]
    for batch in (False, True):
        if batch:
            monkeypatch.setenv("SAGEMAKER_BATCH", "true")
        for body, content_type, accept in requests:
            composed = algorithm.output_fn(
                algorithm.predict_fn(algorithm.input_fn(body, content_type), model), accept
            )
            assert algorithm.transform_fn(model, body, content_type, accept) == composed


def test_selectable_inference_output(
    binary_job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = algorithm.model_fn(binary_job["run"].model_dir)
    x_test = binary_job["data"][4][:4]
    prediction = algorithm.predict_fn(algorithm.input_fn(_csv(x_test), "text/csv"), model)
    monkeypatch.setenv("SAGEMAKER_INFERENCE_OUTPUT", "predicted_label, probabilities")
    body, _ = algorithm.output_fn(prediction, "application/json")
    predictions = json.loads(body)["predictions"]
    for item, p in zip(predictions, prediction.values, strict=True):
        assert item["predicted_label"] == int(p > 0.5)
        assert item["probabilities"] == pytest.approx([1 - p, p])
    body, _ = algorithm.output_fn(prediction, "text/csv")
    first = body.decode().splitlines()[0]
    assert re.fullmatch(r'[01],"\[\S+, \S+\]"', first)


def test_libsvm_with_weights_is_the_default_content_type(tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    x, y = x[:300], y[:300]
    weights = np.where(np.arange(len(y)) % 3 == 0, 2.0, 1.0)
    lines = [
        f"{label}:{weight} "
        + " ".join(f"{i}:{float(v)!r}" for i, v in enumerate(row) if i % 4 != 2)
        for label, weight, row in zip(y, weights, x, strict=True)
    ]
    hyperparameters = {"num_round": 30, "max_depth": 4, "learning_rate": 0.2, "lambda": 2}
    run = run_training(
        MODULE, tmp_path, hyperparameters, {"train": {"data.libsvm": "\n".join(lines) + "\n"}}
    )
    assert run.returncode == 0, run.log

    sparse_x = x.copy()
    sparse_x[:, 2::4] = np.nan  # the indices left out are missing values, as in XGBoost's reader
    dtrain = xgb.DMatrix(sparse_x, label=y, weight=weights)
    reference = xgb.train({"max_depth": 4, "eta": 0.2, "lambda": 2.0}, dtrain, 30)
    model = algorithm.model_fn(run.model_dir)
    np.testing.assert_allclose(
        model.boosters[0].predict(xgb.DMatrix(sparse_x)),
        reference.predict(xgb.DMatrix(sparse_x)),
        atol=1e-6,
    )
    assert _metric_values(run, "train:rmse")  # the train channel alone is still logged


def test_multiclass_from_parquet(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    x_train, y_train, x_val, y_val, x_test, y_test = _split(x, y, seed=1)

    def parquet(labels: np.ndarray, features: np.ndarray) -> bytes:
        frame = pd.DataFrame(np.column_stack([labels, features]), columns=list("yabcd"))
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        return buffer.getvalue()

    hyperparameters = {
        "num_round": 20,
        "objective": "multi:softprob",
        "num_class": 3,
        "max_depth": 2,
        "eval_metric": "mlogloss",
    }
    run = run_training(
        MODULE,
        tmp_path,
        hyperparameters,
        {
            "train": {"t.parquet": parquet(y_train, x_train)},
            "validation": {"v.parquet": parquet(y_val, x_val)},
        },
        {"train": "application/x-parquet", "validation": "application/x-parquet"},
    )
    assert run.returncode == 0, run.log
    params = {
        "objective": "multi:softprob",
        "num_class": 3,
        "max_depth": 2,
        "eval_metric": ["mlogloss"],
    }
    reference = xgb.train(params, xgb.DMatrix(x_train, label=y_train), 20)
    model = algorithm.model_fn(run.model_dir)
    assert model.objective == "multi:softprob" and model.num_class == "3"
    prediction = algorithm.predict_fn(algorithm.input_fn(_csv(x_test), "text/csv"), model)
    np.testing.assert_allclose(prediction.values, reference.predict(xgb.DMatrix(x_test)), atol=1e-6)
    assert (prediction.values.argmax(axis=1) == y_test).mean() > 0.85
    assert len(_metric_values(run, "validation:mlogloss")) == 20

    body, _ = algorithm.output_fn(prediction, "application/json")
    first = json.loads(body)["predictions"][0]["score"]
    assert len(first) == 3 and sum(first) == pytest.approx(1, abs=1e-5)
    body, _ = algorithm.output_fn(prediction, "text/csv")
    assert [len(line.split(",")) for line in body.decode().splitlines()] == [3] * len(x_test)


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"max_depth": 3}, "num_round"),
        ({"num_round": 10, "eta": 2}, "eta"),
        ({"num_round": 10, "foo": 1}, "foo"),
        ({"num_round": 10, "objective": "multi:softmax"}, "num_class"),
        ({"num_round": 10, "eval_metric": "auc"}, "auc"),
        ({"num_round": 10, "subsample": 0}, "subsample"),
    ],
)
def test_bad_hyperparameters_fail_the_job(
    tmp_path: Path, hyperparameters: dict[str, Any], named: str
) -> None:
    run = run_training(
        MODULE,
        tmp_path,
        hyperparameters,
        {"train": {"d.csv": "1,2,3\n0,1,1\n"}},
        {"train": "text/csv"},
    )
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure
    assert not (run.model_dir / "xgboost-model").exists()


def test_container_metrics_are_computed_on_class_predictions(tmp_path: Path) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    x_train, y_train, x_val, y_val, _, _ = _split(x, y, seed=2)
    hyperparameters = {"num_round": 10, "objective": "binary:logistic", "eval_metric": "accuracy"}
    run = run_training(
        MODULE,
        tmp_path,
        hyperparameters,
        {
            "train": {"t.csv": _csv(np.column_stack([y_train, x_train]))},
            "validation": {"v.csv": _csv(np.column_stack([y_val, x_val]))},
        },
        {"train": "text/csv", "validation": "text/csv"},
    )
    assert run.returncode == 0, run.log
    booster = algorithm.model_fn(run.model_dir).boosters[0]
    expected = np.mean((booster.predict(xgb.DMatrix(x_val)) > 0.5) == y_val)
    assert _metric_values(run, "validation:accuracy")[-1] == pytest.approx(expected, abs=1e-5)
    assert expected > 0.9
