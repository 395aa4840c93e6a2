"""PCA trained as SageMaker runs it (a subprocess over an /opt/ml-like directory), compared with
scikit-learn's PCA on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from salvia.algorithms import pca, recordio

from .harness import TrainingRun, run_training

MODULE = "salvia.algorithms.pca"
COMPONENTS = 10


def csv(rows: np.ndarray) -> str:
    return "\n".join(",".join(map(repr, map(float, row))) for row in rows) + "\n"


def digits() -> np.ndarray:
    data: np.ndarray = load_digits().data
    return data


def train_pca(root: Path, mode: str, **extra: object) -> TrainingRun:
    data = digits()
    run = run_training(
        MODULE,
        root,
        {
            "feature_dim": data.shape[1],
            "mini_batch_size": 200,
            "num_components": COMPONENTS,
            "algorithm_mode": mode,
            **extra,
        },
        {"train": {"train.csv": csv(data)}, "test": {"test.csv": csv(data[:100])}},
        {"train": "text/csv", "test": "text/csv"},
    )
    assert run.returncode == 0, run.log
    return run


@pytest.fixture(scope="module")
def regular(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    return train_pca(tmp_path_factory.mktemp("pca"), "regular")


def test_regular_mode_matches_scikit_learn(regular: TrainingRun) -> None:
    data = digits()
    reference = PCA(n_components=COMPONENTS).fit(data)
    model = pca.model_fn(regular.model_dir)
    np.testing.assert_allclose(
        model["explained_variance"], reference.explained_variance_, rtol=1e-6, atol=0
    )
    np.testing.assert_allclose(
        model["explained_variance_ratio"], reference.explained_variance_ratio_, rtol=1e-6
    )
    np.testing.assert_allclose(model["singular_values"], reference.singular_values_, rtol=1e-6)
    np.testing.assert_allclose(model["components"], reference.components_, atol=1e-6)
    projections = [p["projection"] for p in pca.predict_fn(data[:50], model)]
    np.testing.assert_allclose(projections, reference.transform(data[:50]), atol=1e-6)


def test_randomized_mode_approximates_scikit_learn(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = train_pca(tmp_path_factory.mktemp("pca-randomized"), "randomized")
    reference = PCA(n_components=COMPONENTS).fit(digits())
    model = pca.model_fn(run.model_dir)
    np.testing.assert_allclose(
        model["explained_variance"], reference.explained_variance_, rtol=1e-3
    )


def test_without_subtracting_the_mean(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = train_pca(tmp_path_factory.mktemp("pca-raw"), "regular", subtract_mean="false")
    data = digits()
    model = pca.model_fn(run.model_dir)
    # the components are then the top right singular vectors of the raw data
    _, singular, vt = np.linalg.svd(data, full_matrices=False)
    np.testing.assert_allclose(model["singular_values"], singular[:COMPONENTS], rtol=1e-6)
    overlap = np.abs(np.sum(model["components"] * vt[:COMPONENTS], axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)
    projection = pca.predict_fn(data[:1], model)[0]["projection"]
    np.testing.assert_allclose(projection, data[0] @ model["components"].T, atol=1e-9)


def test_inference_formats(regular: TrainingRun) -> None:
    data = digits()[:3]
    model = pca.model_fn(regular.model_dir)
    body, content_type = pca.output_fn(
        pca.predict_fn(pca.input_fn(csv(data), "text/csv"), model), "application/json"
    )
    assert content_type == "application/json"
    payload = json.loads(body)
    assert list(payload) == ["projections"]
    assert [list(p) for p in payload["projections"]] == [["projection"]] * 3
    assert all(len(p["projection"]) == COMPONENTS for p in payload["projections"])

    request = json.dumps({"instances": [{"features": row.tolist()} for row in data]})
    body, content_type = pca.output_fn(
        pca.predict_fn(pca.input_fn(request, "application/json"), model), "application/jsonlines"
    )
    assert content_type == "application/jsonlines"
    assert [json.loads(line) for line in body.decode().splitlines()] == payload["projections"]

    body, content_type = pca.output_fn(pca.predict_fn(data, model), "text/csv")
    assert content_type == "text/csv"
    rows = [[float(v) for v in line.split(",")] for line in body.decode().splitlines()]
    np.testing.assert_allclose(rows, [p["projection"] for p in payload["projections"]])

    body, content_type = pca.output_fn(payload["projections"], "application/x-recordio-protobuf")
    labels = [recordio.decode_message(r)[1] for r in recordio.read_records(body)]
    np.testing.assert_allclose(
        [lab["projection"].values for lab in labels],
        [p["projection"] for p in payload["projections"]],
        rtol=1e-5,
        atol=1e-4,
    )


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"feature_dim": 64, "num_components": 3}, "mini_batch_size"),
        ({"feature_dim": 64, "mini_batch_size": 10}, "num_components"),
        ({"mini_batch_size": 10, "num_components": 3}, "feature_dim"),
        (
            {"feature_dim": 64, "mini_batch_size": 10, "num_components": 3, "algorithm_mode": "x"},
            "algorithm_mode",
        ),
        (
            {"feature_dim": 64, "mini_batch_size": 10, "num_components": 3, "subtract_mean": "y"},
            "subtract_mean",
        ),
        ({"feature_dim": 64, "mini_batch_size": 10, "num_components": 65}, "num_components"),
    ],
)
def test_bad_hyperparameter_fails_naming_it(
    tmp_path_factory: pytest.TempPathFactory, hyperparameters: dict[str, object], named: str
) -> None:
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("pca-bad"),
        hyperparameters,
        {"train": {"train.csv": csv(digits()[:50])}},
    )
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure, run.failure
