"""The built-in CatBoost algorithm trains what the catboost library trains with SageMaker's
documented defaults, logs its metrics per iteration, and serves CSV and JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import catboost as cb
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.metrics import roc_auc_score

from salvia.algorithms import catboost as algorithm
from tests.algorithms.harness import TrainingRun, run_training

MODULE = "salvia.algorithms.catboost"
# DG catboost-hyperparameters defaults, as CatBoost parameters
DEFAULTS = {
    "iterations": 500,
    "learning_rate": 0.009,
    "depth": 6,
    "l2_leaf_reg": 3,
    "random_strength": 1.0,
    "rsm": 1.0,
    "sampling_frequency": "PerTreeLevel",
    "boosting_type": "Plain",
    "grow_policy": "SymmetricTree",
    "random_seed": 0,
    "thread_count": -1,
    "verbose": 1,
    "allow_writing_files": False,
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


@pytest.fixture(scope="module")
def binary_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    x, y = load_breast_cancer(return_X_y=True)
    data = _split(x, y)
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("cb-binary"),
        {"iterations": 300, "learning_rate": 0.1, "early_stopping_rounds": 20, "depth": 4},
        {
            "train": {"train.csv": _csv(np.column_stack([data[1], data[0]]))},
            "validation": {"validation.csv": _csv(np.column_stack([data[3], data[2]]))},
        },
        {"train": "text/csv", "validation": "text/csv"},
    )
    return {"run": run, "data": data}


def test_binary_training_equals_the_catboost_library(binary_job: dict[str, Any]) -> None:
    run: TrainingRun = binary_job["run"]
    assert run.returncode == 0, run.log
    x_train, y_train, x_val, y_val, x_test, y_test = binary_job["data"]
    params = {
        **DEFAULTS,
        "iterations": 300,
        "learning_rate": 0.1,
        "depth": 4,
        "loss_function": "Logloss",
        "eval_metric": "AUC",
    }
    reference = cb.CatBoost(params)
    reference.fit(
        cb.Pool(x_train, label=y_train),
        eval_set=cb.Pool(x_val, label=y_val),
        early_stopping_rounds=20,
    )
    model = algorithm.model_fn(run.model_dir)
    ours = algorithm.predict_fn(x_test, model).output
    expected = reference.predict(x_test, prediction_type="Probability")
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)
    assert model.model.tree_count_ == reference.tree_count_ < 300
    assert roc_auc_score(y_test, ours[:, 1]) > 0.97

    auc = _metric_values(run, "validation:AUC")
    assert len(auc) > 10 and max(auc) == pytest.approx(
        reference.get_best_score()["validation"]["AUC"], rel=1e-5
    )
    assert _metric_values(run, "train:Logloss")[-1] < _metric_values(run, "train:Logloss")[0]


def test_binary_inference_formats(binary_job: dict[str, Any]) -> None:
    model = algorithm.model_fn(binary_job["run"].model_dir)
    x_test = binary_job["data"][4][:5]
    expected = model.model.predict(x_test, prediction_type="Probability")

    prediction = algorithm.predict_fn(algorithm.input_fn(_csv(x_test).encode(), "text/csv"), model)
    body, content_type = algorithm.output_fn(prediction, "application/json")
    assert content_type == "application/json"
    predictions = json.loads(body)["predictions"]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], expected)
    assert [p["predicted_label"] for p in predictions] == list(expected.argmax(axis=1))

    rows = json.dumps([row.tolist() for row in x_test])  # a bare list of rows
    body, content_type = algorithm.output_fn(
        algorithm.predict_fn(algorithm.input_fn(rows, "application/json"), model), "text/csv"
    )
    assert content_type == "text/csv"
    lines = [[float(v) for v in line.split(",")] for line in body.decode().splitlines()]
    np.testing.assert_allclose(lines, expected)


def test_regression(tmp_path: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    x_train, y_train, _, _, x_test, y_test = _split(x, y, seed=5)
    run = run_training(
        MODULE,
        tmp_path,
        {"iterations": 100, "learning_rate": 0.05, "grow_policy": "Lossguide", "max_leaves": 16},
        {"train": {"t.csv": _csv(np.column_stack([y_train, x_train]))}},
        {"train": "text/csv"},
    )
    assert run.returncode == 0, run.log
    params = {
        **{k: v for k, v in DEFAULTS.items() if k != "sampling_frequency"},
        "iterations": 100,
        "learning_rate": 0.05,
        "grow_policy": "Lossguide",
        "max_leaves": 16,
        "min_data_in_leaf": 1,
        "loss_function": "RMSE",
        "eval_metric": "RMSE",
    }
    reference = cb.CatBoost(params)
    reference.fit(cb.Pool(x_train, label=y_train))
    model = algorithm.model_fn(run.model_dir)
    prediction = algorithm.predict_fn(x_test, model)
    np.testing.assert_allclose(prediction.output, reference.predict(x_test), atol=1e-9)
    assert np.sqrt(np.mean((prediction.output - y_test) ** 2)) < 65  # target sd is about 77
    assert len(_metric_values(run, "train:RMSE")) == 100
    body, _ = algorithm.output_fn(prediction, "application/json")
    assert [p["score"] for p in json.loads(body)["predictions"]] == pytest.approx(
        prediction.output.tolist()
    )


def test_multiclass(tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    run = run_training(
        MODULE,
        tmp_path,
        {"iterations": 50, "learning_rate": 0.1},
        {"train": {"t.csv": _csv(np.column_stack([y, x]))}},
        {"train": "text/csv"},
    )
    assert run.returncode == 0, run.log
    params = {
        **DEFAULTS,
        "iterations": 50,
        "learning_rate": 0.1,
        "loss_function": "MultiClass",
        "eval_metric": "MultiClass",
    }
    reference = cb.CatBoost(params)
    reference.fit(cb.Pool(x, label=y))
    model = algorithm.model_fn(run.model_dir)
    prediction = algorithm.predict_fn(x, model)
    expected = reference.predict(x, prediction_type="Probability")
    np.testing.assert_allclose(prediction.output, expected, atol=1e-9)
    assert (prediction.output.argmax(axis=1) == y).mean() > 0.9


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"iterations": 0}, "iterations"),
        ({"depth": 17}, "depth"),
        ({"grow_policy": "Oblivious"}, "grow_policy"),
        ({"n_estimators": 10}, "n_estimators"),
        ({"max_bin": "many"}, "max_bin"),
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
    assert not (run.model_dir / "model.cbm").exists()
