"""K-Means trained as SageMaker runs it (a subprocess over an /opt/ml-like directory), compared
with scikit-learn's KMeans on the same data."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from salvia.algorithms import kmeans, recordio

from .harness import TrainingRun, run_training

MODULE = "salvia.algorithms.kmeans"
K, DIM = 6, 5


def csv(rows: np.ndarray) -> str:
    return "\n".join(",".join(map(repr, map(float, row))) for row in rows) + "\n"


def metrics(run: TrainingRun) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, regex in kmeans.SPEC.metrics:
        values = re.findall(regex, run.stdout)
        if values:
            found[name] = float(values[-1])
    return found


def blobs() -> tuple[np.ndarray, np.ndarray]:
    data, _ = make_blobs(n_samples=4000, centers=K, n_features=DIM, cluster_std=2.0, random_state=3)
    return data[:3000], data[3000:]


def inertia(data: np.ndarray, centers: np.ndarray) -> float:
    d2 = ((data[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    return float(d2.min(axis=1).sum())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    train, test = blobs()
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("kmeans"),
        {
            "k": K,
            "feature_dim": DIM,
            "mini_batch_size": 500,
            "epochs": 3,
            "eval_metrics": '["msd","ssd"]',
        },
        {"train": {"train.csv": csv(train)}, "test": {"test.csv": csv(test)}},
        {"train": "text/csv", "test": "text/csv"},
    )
    assert run.returncode == 0, run.log
    return run


def test_inertia_matches_scikit_learn(trained: TrainingRun) -> None:
    train, test = blobs()
    model = kmeans.model_fn(trained.model_dir)
    reference = KMeans(n_clusters=K, n_init=10, random_state=0).fit(train)
    ours = inertia(train, model["centers"])
    assert ours <= reference.inertia_ * 1.02, (ours, reference.inertia_)

    found = metrics(trained)
    test_ssd = inertia(test, model["centers"])
    assert found["test:ssd"] == pytest.approx(test_ssd, rel=1e-9)
    assert found["test:msd"] == pytest.approx(test_ssd / len(test), rel=1e-9)
    assert found["train:progress"] == 100
    assert "train:msd" in found


def test_inference_formats(trained: TrainingRun) -> None:
    _, test = blobs()
    model = kmeans.model_fn(trained.model_dir)
    rows = test[:3]
    expected = np.sqrt(((rows[:, None, :] - model["centers"][None]) ** 2).sum(axis=2))

    body, content_type = kmeans.output_fn(
        kmeans.predict_fn(kmeans.input_fn(csv(rows), "text/csv"), model), "application/json"
    )
    assert content_type == "application/json"
    predictions = json.loads(body)["predictions"]
    assert [set(p) for p in predictions] == [{"closest_cluster", "distance_to_cluster"}] * 3
    for prediction, distances in zip(predictions, expected, strict=True):
        assert prediction["closest_cluster"] == float(np.argmin(distances))
        assert prediction["distance_to_cluster"] == pytest.approx(distances.min(), rel=1e-9)

    request = json.dumps({"instances": [{"features": row.tolist()} for row in rows]})
    body, content_type = kmeans.output_fn(
        kmeans.predict_fn(kmeans.input_fn(request, "application/json"), model),
        "application/jsonlines",
    )
    assert content_type == "application/jsonlines"
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines == predictions

    body, content_type = kmeans.output_fn(kmeans.predict_fn(rows, model), "text/csv")
    assert content_type == "text/csv"
    cells = [line.split(",") for line in body.decode().splitlines()]
    assert [float(c[0]) for c in cells] == [p["closest_cluster"] for p in predictions]
    assert [float(c[1]) for c in cells] == pytest.approx(
        [p["distance_to_cluster"] for p in predictions]
    )

    body, content_type = kmeans.output_fn(predictions, "application/x-recordio-protobuf")
    assert content_type == "application/x-recordio-protobuf"
    labels = [recordio.decode_message(r)[1] for r in recordio.read_records(body)]
    assert [float(lab["closest_cluster"].values[0]) for lab in labels] == [
        p["closest_cluster"] for p in predictions
    ]


def test_recordio_training_data(tmp_path_factory: pytest.TempPathFactory) -> None:
    train, _ = blobs()
    out = io.BytesIO()
    recordio.write_dataset(out, train.astype(np.float32))
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("kmeans-recordio"),
        {"k": K, "feature_dim": DIM, "init_method": "kmeans++", "force_dense": "True"},
        {"train": {"train.rec": out.getvalue()}},
        {"train": "application/x-recordio-protobuf"},
    )
    assert run.returncode == 0, run.log
    centers = kmeans.model_fn(run.model_dir)["centers"]
    reference = KMeans(n_clusters=K, n_init=10, random_state=0).fit(train)
    assert inertia(train, centers) <= reference.inertia_ * 1.02


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"feature_dim": DIM}, "k"),
        ({"k": K}, "feature_dim"),
        ({"k": K, "feature_dim": DIM, "init_method": "farthest"}, "init_method"),
        ({"k": K, "feature_dim": DIM, "extra_center_factor": "many"}, "extra_center_factor"),
        ({"k": K, "feature_dim": DIM, "eval_metrics": '["mae"]'}, "eval_metrics"),
        ({"k": K, "feature_dim": DIM, "local_lloyd_tol": "2"}, "local_lloyd_tol"),
        ({"k": K, "feature_dim": DIM + 1}, "feature_dim"),
    ],
)
def test_bad_hyperparameter_fails_naming_it(
    tmp_path_factory: pytest.TempPathFactory, hyperparameters: dict[str, object], named: str
) -> None:
    train, _ = blobs()
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("kmeans-bad"),
        hyperparameters,
        {"train": {"train.csv": csv(train[:200])}},
    )
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure, run.failure
