"""The built-in LightGBM algorithm trains what the lightgbm library trains with SageMaker's
documented defaults, logs its metrics per iteration, and serves CSV and JSON."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.metrics import roc_auc_score

from salvia.algorithms import lightgbm as algorithm
from tests.algorithms.harness import TrainingRun, run_training

MODULE = "salvia.algorithms.lightgbm"
# DG lightgbm-hyperparameters defaults, as LightGBM parameters
DEFAULTS = {
    "learning_rate": 0.1,
    "num_leaves": 64,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "max_depth": 6,
    "min_data_in_leaf": 3,
    "max_delta_step": 0.0,
    "lambda_l1": 0.0,
    "lambda_l2": 0.0,
    "boosting": "gbdt",
    "min_gain_to_split": 0.0,
    "tree_learner": "serial",
    "feature_fraction_bynode": 1.0,
    "max_bin": 255,
    "tweedie_variance_power": 1.5,
    "num_threads": 0,
    "verbosity": 1,
}


def _csv(rows: np.ndarray) -> str:
    return "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows)


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(y))
    train, valid, test = np.split(order, [int(0.6 * len(y)), int(0.8 * len(y))])
    return x[train], y[train], x[valid], y[valid], x[test], y[test]


def _metric_values(run: TrainingRun, name: str) -> list[float]:
    regex = dict(algorithm.SPEC.metrics)[name]
    return [float(m.group(1)) for line in run.stdout.splitlines() if (m := re.search(regex, line))]


def _reference(
    params: dict[str, Any],
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    rounds: int,
    stop: int,
) -> lgb.Booster:
    dtrain = lgb.Dataset(train[0], label=train[1])
    dvalid = lgb.Dataset(valid[0], label=valid[1], reference=dtrain)
    return lgb.train(
        {**DEFAULTS, **params},
        dtrain,
        num_boost_round=rounds,
        valid_sets=[dtrain, dvalid],
        valid_names=["train", "validation"],
        callbacks=[lgb.early_stopping(stop, verbose=False)],
    )


@pytest.fixture(scope="module")
def binary_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    x, y = load_breast_cancer(return_X_y=True)
    data = _split(x, y)
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("lgb-binary"),
        {"num_boost_round": 200, "early_stopping_rounds": 10, "learning_rate": 0.05},
        {
            "train": {"train.csv": _csv(np.column_stack([data[1], data[0]]))},
            "validation": {"validation.csv": _csv(np.column_stack([data[3], data[2]]))},
        },
        {"train": "text/csv", "validation": "text/csv"},
    )
    return {"run": run, "data": data}


def test_binary_training_equals_the_lightgbm_library(binary_job: dict[str, Any]) -> None:
    run: TrainingRun = binary_job["run"]
    assert run.returncode == 0, run.log
    x_train, y_train, x_val, y_val, x_test, y_test = binary_job["data"]
    params = {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": 0.05,
        "scale_pos_weight": 1.0,
        "is_unbalance": False,
    }
    reference = _reference(params, (x_train, y_train), (x_val, y_val), 200, 10)
    model = algorithm.model_fn(run.model_dir)
    ours = algorithm.predict_fn(x_test, model).output
    np.testing.assert_allclose(ours, reference.predict(x_test), rtol=0, atol=1e-9)
    assert model.booster.current_iteration() <= reference.best_iteration + 10
    assert roc_auc_score(y_test, ours) > 0.97

    validation = _metric_values(run, "validation:binary_logloss")
    train = _metric_values(run, "train:binary_logloss")
    assert len(validation) == len(train) > 10 and train[-1] < train[0]
    assert min(validation) == pytest.approx(
        reference.best_score["validation"]["binary_logloss"], rel=1e-5
    )


def test_binary_inference_formats(binary_job: dict[str, Any]) -> None:
    model = algorithm.model_fn(binary_job["run"].model_dir)
    x_test = binary_job["data"][4][:5]
    expected = model.booster.predict(x_test)

    prediction = algorithm.predict_fn(algorithm.input_fn(_csv(x_test).encode(), "text/csv"), model)
    body, content_type = algorithm.output_fn(prediction, "application/json")
    assert content_type == "application/json"
    predictions = json.loads(body)["predictions"]
    assert [p["probabilities"][1] for p in predictions] == pytest.approx(expected)
    assert [p["predicted_label"] for p in predictions] == [int(p > 0.5) for p in expected]

    rows = json.dumps({"instances": [{"features": row.tolist()} for row in x_test]})
    body, content_type = algorithm.output_fn(
        algorithm.predict_fn(algorithm.input_fn(rows, "application/json"), model), "text/csv"
    )
    assert content_type == "text/csv"
    lines = [[float(v) for v in line.split(",")] for line in body.decode().splitlines()]
    assert [row[1] for row in lines] == pytest.approx(expected)


def test_regression_from_parquet(tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    x_train, y_train, x_val, y_val, x_test, y_test = _split(x, y, seed=3)

    def parquet(labels: np.ndarray, features: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        pd.DataFrame(np.column_stack([labels, features])).rename(columns=str).to_parquet(buffer)
        return buffer.getvalue()

    run = run_training(
        MODULE,
        tmp_path,
        {"num_boost_round": 50, "num_leaves": 8, "metric": "l1"},
        {
            "train": {"t.parquet": parquet(y_train, x_train)},
            "validation": {"v.parquet": parquet(y_val, x_val)},
        },
        {"train": "application/x-parquet", "validation": "application/x-parquet"},
    )
    assert run.returncode == 0, run.log
    params = {"objective": "regression", "metric": "l1", "num_leaves": 8}
    reference = _reference(params, (x_train, y_train), (x_val, y_val), 50, 10)
    model = algorithm.model_fn(run.model_dir)
    assert model.problem.kind == "regression"
    prediction = algorithm.predict_fn(x_test, model)
    np.testing.assert_allclose(prediction.output, reference.predict(x_test), atol=1e-9)
    assert np.mean(np.abs(prediction.output - y_test)) < 50  # the mean target is about 150
    assert _metric_values(run, "validation:l1")
    body, _ = algorithm.output_fn(prediction, "text/csv")
    assert [float(v) for v in body.decode().split()] == pytest.approx(prediction.output)


def test_multiclass_with_arbitrary_class_labels(tmp_path: Path) -> None:
    x, y = load_wine(return_X_y=True)
    labels = np.array([3, 5, 9])[y]  # classes need not be 0..k-1
    run = run_training(
        MODULE,
        tmp_path,
        {"num_boost_round": 30},
        {"train": {"t.csv": _csv(np.column_stack([labels, x]))}},
        {"train": "text/csv"},
    )
    assert run.returncode == 0, run.log
    reference = lgb.train(
        {**DEFAULTS, "objective": "multiclass", "num_class": 3, "metric": "multi_logloss"},
        lgb.Dataset(x, label=y),
        30,
    )
    model = algorithm.model_fn(run.model_dir)
    prediction = algorithm.predict_fn(x, model)
    np.testing.assert_allclose(prediction.output, reference.predict(x), atol=1e-9)
    body, _ = algorithm.output_fn(prediction, "application/jsonlines")
    first = json.loads(body.decode().splitlines()[0])
    assert first["predicted_label"] in (3, 5, 9) and len(first["probabilities"]) == 3
    assert _metric_values(run, "train:multi_logloss")


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"num_boost_round": 0}, "num_boost_round"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"metric": "accuracy"}, "metric"),
        ({"num_rounds": 10}, "num_rounds"),
        ({"is_unbalance": "True", "scale_pos_weight": 2}, "is_unbalance"),
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
    assert not (run.model_dir / "model.txt").exists()
