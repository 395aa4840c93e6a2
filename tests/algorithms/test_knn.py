"""k-NN trained as SageMaker runs it (a subprocess over an /opt/ml-like directory), compared
with scikit-learn's KNeighborsClassifier and KNeighborsRegressor on the same split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris, load_wine
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from salvia.algorithms import knn

from .harness import TrainingRun, run_training

MODULE = "salvia.algorithms.knn"


def csv(features: np.ndarray, labels: np.ndarray | None = None) -> str:
    rows = features if labels is None else np.column_stack([labels, features])
    return "\n".join(",".join(map(repr, map(float, row))) for row in rows) + "\n"


def metrics(run: TrainingRun) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, regex in knn.SPEC.metrics:
        values = re.findall(regex, run.stdout)
        if values:
            found[name] = float(values[-1])
    return found


def split(features: np.ndarray, labels: np.ndarray, stratify: bool = True) -> list[np.ndarray]:
    parts: list[np.ndarray] = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels if stratify else None
    )
    return parts


def train_knn(root: Path, parts: list[np.ndarray], **hyperparameters: object) -> TrainingRun:
    x_train, x_test, y_train, y_test = parts
    run = run_training(
        MODULE,
        root,
        {"feature_dim": x_train.shape[1], "sample_size": len(x_train), **hyperparameters},
        {"train": {"train.csv": csv(x_train, y_train)}, "test": {"test.csv": csv(x_test, y_test)}},
        {"train": "text/csv", "test": "text/csv;label_size=1"},
    )
    assert run.returncode == 0, run.log
    return run


LOADERS = {"iris": load_iris, "wine": load_wine}


@pytest.mark.parametrize(("dataset", "k"), [("iris", 5), ("wine", 7)])
def test_classifier_accuracy_equals_scikit_learn(tmp_path: Path, dataset: str, k: int) -> None:
    features, labels = LOADERS[dataset](return_X_y=True)
    parts = split(features, labels)
    x_train, x_test, y_train, y_test = parts
    run = train_knn(tmp_path, parts, k=k, predictor_type="classifier")
    reference = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train)
    expected = reference.score(x_test, y_test)
    model = knn.model_fn(run.model_dir)
    predicted = [p["predicted_label"] for p in knn.predict_fn(x_test, model)]
    assert np.mean(np.asarray(predicted) == y_test) == expected
    assert predicted == reference.predict(x_test).astype(float).tolist()
    assert metrics(run)["test:accuracy"] == pytest.approx(expected)


def test_regressor_equals_scikit_learn(tmp_path: Path) -> None:
    features, labels = load_diabetes(return_X_y=True)
    parts = split(features, labels, stratify=False)
    x_train, x_test, y_train, y_test = parts
    run = train_knn(tmp_path, parts, k=10, predictor_type="regressor")
    reference = KNeighborsRegressor(n_neighbors=10).fit(x_train, y_train).predict(x_test)
    model = knn.model_fn(run.model_dir)
    predicted = [p["predicted_label"] for p in knn.predict_fn(x_test, model)]
    np.testing.assert_allclose(predicted, reference, rtol=1e-12)
    expected_mse = float(np.mean((reference - y_test) ** 2))
    assert metrics(run)["test:mse"] == pytest.approx(expected_mse, rel=1e-9)


@pytest.mark.parametrize("reduction", ["sign", "fjlt"])
def test_dimension_reduction_keeps_accuracy(tmp_path: Path, reduction: str) -> None:
    parts = split(*LOADERS["wine"](return_X_y=True))
    run = train_knn(
        tmp_path,
        parts,
        k=5,
        predictor_type="classifier",
        dimension_reduction_type=reduction,
        dimension_reduction_target=8,
    )
    model = knn.model_fn(run.model_dir)
    assert model["points"].shape[1] == 8
    # wine's scale is dominated by one feature, so a distance-preserving projection keeps
    # about the accuracy of the full-dimension search
    assert metrics(run)["test:accuracy"] >= 0.6


def test_sample_size_and_index_types(tmp_path: Path) -> None:
    parts = split(*load_iris(return_X_y=True))
    run = run_training(
        MODULE,
        tmp_path,
        {
            "feature_dim": 4,
            "k": 3,
            "predictor_type": "classifier",
            "sample_size": 40,
            "index_type": "faiss.IVFFlat",
            "faiss_index_ivf_nlists": "auto",
            "index_metric": "COSINE",
        },
        {"train": {"train.csv": csv(parts[0], parts[2])}},
    )
    assert run.returncode == 0, run.log
    model = knn.model_fn(run.model_dir)
    assert len(model["points"]) == 40
    np.testing.assert_allclose(np.linalg.norm(model["points"], axis=1), 1.0)


def test_inference_formats(tmp_path: Path) -> None:
    parts = split(*load_iris(return_X_y=True))
    run = train_knn(tmp_path, parts, k=3, predictor_type="classifier")
    model = knn.model_fn(run.model_dir)
    rows = parts[1][:2]

    body, content_type = knn.output_fn(
        knn.predict_fn(knn.input_fn(csv(rows), "text/csv"), model), "application/json"
    )
    assert content_type == "application/json"
    predictions = json.loads(body)["predictions"]
    assert [list(p) for p in predictions] == [["predicted_label"]] * 2

    request = json.dumps(
        {
            "instances": [
                {"data": {"features": {"values": rows[0].tolist()}}},
                {"features": rows[1].tolist()},
            ]
        }
    )
    body, content_type = knn.output_fn(
        knn.predict_fn(knn.input_fn(request, "application/json"), model),
        "application/json; verbose=true",
    )
    verbose = json.loads(body)["predictions"]
    for item, row in zip(verbose, rows, strict=True):
        assert set(item) == {"predicted_label", "distances", "labels"}
        distances = np.linalg.norm(parts[0] - row, axis=1)
        np.testing.assert_allclose(item["distances"], np.sort(distances)[:3], rtol=1e-9)
        assert item["distances"] == sorted(item["distances"])
        assert item["labels"] == parts[2][np.argsort(distances)[:3]].astype(float).tolist()
    assert [v["predicted_label"] for v in verbose] == [p["predicted_label"] for p in predictions]

    lines = "\n".join(json.dumps({"features": row.tolist()}) for row in rows)
    body, content_type = knn.output_fn(
        knn.predict_fn(knn.input_fn(lines, "application/jsonlines"), model),
        "application/jsonlines",
    )
    assert content_type == "application/jsonlines"
    assert [json.loads(line) for line in body.decode().splitlines()] == predictions

    body, content_type = knn.output_fn(knn.predict_fn(rows, model), "text/csv")
    assert content_type == "text/csv"
    assert [float(v) for v in body.decode().split()] == [p["predicted_label"] for p in predictions]


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"feature_dim": 4, "k": 3, "predictor_type": "classifier"}, "sample_size"),
        ({"feature_dim": 4, "k": 3, "sample_size": 10}, "predictor_type"),
        ({"feature_dim": 4, "sample_size": 10, "predictor_type": "classifier"}, "k"),
        (
            {"feature_dim": 4, "k": 3, "sample_size": 10, "predictor_type": "ranker"},
            "predictor_type",
        ),
        (
            {
                "feature_dim": 4,
                "k": 3,
                "sample_size": 10,
                "predictor_type": "classifier",
                "dimension_reduction_type": "sign",
            },
            "dimension_reduction_target",
        ),
        (
            {
                "feature_dim": 4,
                "k": 3,
                "sample_size": 10,
                "predictor_type": "classifier",
                "index_type": "faiss.HNSW",
            },
            "index_type",
        ),
    ],
)
def test_bad_hyperparameter_fails_naming_it(
    tmp_path: Path, hyperparameters: dict[str, object], named: str
) -> None:
    x, y = load_iris(return_X_y=True)
    run = run_training(MODULE, tmp_path, hyperparameters, {"train": {"train.csv": csv(x, y)}})
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure, run.failure
