"""Random Cut Forest trained as SageMaker runs it (a subprocess over an /opt/ml-like directory),
scored on data with planted anomalies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from salvia.algorithms import random_cut_forest as rcf
from salvia.algorithms import recordio

from .harness import TrainingRun, run_training

MODULE = "salvia.algorithms.random_cut_forest"
DIM = 4


def csv(features: np.ndarray, labels: np.ndarray | None = None) -> str:
    rows = features if labels is None else np.column_stack([labels, features])
    return "\n".join(",".join(map(repr, map(float, row))) for row in rows) + "\n"


def metrics(run: TrainingRun) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, regex in rcf.SPEC.metrics:
        values = re.findall(regex, run.stdout)
        if values:
            found[name] = float(values[-1])
    return found


def planted(seed: int, inliers: int = 3000, outliers: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inliers around two centers and 3 % far outliers in random directions."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0] * DIM, [4.0] * DIM])
    normal = rng.normal(size=(inliers, DIM)) + centers[rng.integers(2, size=inliers)]
    direction = rng.normal(size=(outliers, DIM))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    far = 2.0 + direction * rng.uniform(7.0, 12.0, size=(outliers, 1))
    features = np.vstack([normal, far])
    labels = np.r_[np.zeros(inliers), np.ones(outliers)]
    order = rng.permutation(len(labels))
    return features[order], labels[order]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    train, _ = planted(0)
    test, test_labels = planted(1, inliers=1000, outliers=30)
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("rcf"),
        {"feature_dim": DIM, "num_trees": 100, "num_samples_per_tree": 256},
        {"train": {"train.csv": csv(train)}, "test": {"test.csv": csv(test, test_labels)}},
        {"train": "text/csv", "test": "text/csv;label_size=1"},
    )
    assert run.returncode == 0, run.log
    return run


def test_planted_anomalies_score_high(trained: TrainingRun) -> None:
    model = rcf.model_fn(trained.model_dir)
    for seed in (0, 2):  # the training data and new data from the same distribution
        features, labels = planted(seed)
        scores = [p["score"] for p in rcf.predict_fn(features, model)]
        assert roc_auc_score(labels, scores) >= 0.9
    found = metrics(trained)
    assert found["test:f1"] >= 0.8, trained.stdout
    assert found["test:accuracy"] >= 0.95
    assert {"test:precision", "test:recall"} <= set(found)


def test_forest_structure(trained: TrainingRun) -> None:
    forest = rcf.model_fn(trained.model_dir)["forest"]
    assert len(forest.roots) == 100
    # each tree holds its 256 sampled points; leaves partition them
    assert (forest.count[forest.roots] == 256).all()
    leaves = forest.left < 0
    assert forest.count[leaves].sum() == 100 * 256
    internal = ~leaves
    children = forest.count[forest.left[internal]] + forest.count[forest.right[internal]]
    assert (children == forest.count[internal]).all()


def test_scores_are_deterministic_and_independent_of_the_batch(trained: TrainingRun) -> None:
    model = rcf.model_fn(trained.model_dir)
    features, _ = planted(3, inliers=20, outliers=2)
    alone = [rcf.predict_fn(row[None, :], model)[0]["score"] for row in features[:5]]
    together = [p["score"] for p in rcf.predict_fn(features, model)[:5]]
    assert alone == pytest.approx(together, rel=1e-12)


def test_inference_formats(trained: TrainingRun) -> None:
    model = rcf.model_fn(trained.model_dir)
    rows = planted(4, inliers=2, outliers=1)[0]
    body, content_type = rcf.output_fn(
        rcf.predict_fn(rcf.input_fn(csv(rows), "text/csv"), model), "application/json"
    )
    assert content_type == "application/json"
    payload = json.loads(body)
    assert list(payload) == ["scores"]
    assert [list(s) for s in payload["scores"]] == [["score"]] * 3

    request = json.dumps({"instances": [{"features": row.tolist()} for row in rows]})
    body, content_type = rcf.output_fn(
        rcf.predict_fn(rcf.input_fn(request, "application/json"), model), "application/jsonlines"
    )
    assert content_type == "application/jsonlines"
    assert [json.loads(line) for line in body.decode().splitlines()] == payload["scores"]

    body, content_type = rcf.output_fn(rcf.predict_fn(rows, model), "text/csv")
    assert content_type == "text/csv"
    assert [float(v) for v in body.decode().split()] == [s["score"] for s in payload["scores"]]

    body, _ = rcf.output_fn(payload["scores"], "application/x-recordio-protobuf")
    labels = [recordio.decode_message(r)[1] for r in recordio.read_records(body)]
    assert [float(lab["score"].values[0]) for lab in labels] == pytest.approx(
        [s["score"] for s in payload["scores"]], rel=1e-6
    )


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({}, "feature_dim"),
        ({"feature_dim": DIM, "num_trees": 10}, "num_trees"),
        ({"feature_dim": DIM, "num_samples_per_tree": 4096}, "num_samples_per_tree"),
        ({"feature_dim": DIM, "eval_metrics": '["auc"]'}, "eval_metrics"),
        ({"feature_dim": DIM + 1}, "feature_dim"),
    ],
)
def test_bad_hyperparameter_fails_naming_it(
    tmp_path: Path, hyperparameters: dict[str, object], named: str
) -> None:
    features, _ = planted(0, inliers=100, outliers=3)
    run = run_training(MODULE, tmp_path, hyperparameters, {"train": {"train.csv": csv(features)}})
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure, run.failure


def _direct_codisp(forest: rcf.Forest, root: int, x: np.ndarray) -> float:
    """The expected CoDisp of inserting x into one tree, one node at a time (the definition
    that the vectorised scoring computes for all points and trees at once)."""
    node, survive, ancestors, expected = root, 1.0, 0.0, 0.0
    while True:
        lo, hi = forest.lo[node], forest.hi[node]
        span = float((hi - lo).sum())
        extended = float((np.maximum(hi, x) - np.minimum(lo, x)).sum())
        separate = (extended - span) / extended if extended > 0 else 0.0
        expected += survive * separate * max(float(forest.count[node]), ancestors)
        survive *= 1.0 - separate
        if forest.left[node] < 0:
            return expected + survive * ancestors
        left, right = forest.left[node], forest.right[node]
        child, sibling = (left, right) if x[forest.dim[node]] <= forest.cut[node] else (right, left)
        ancestors = max(ancestors, forest.count[sibling] / (forest.count[child] + 1.0))
        node = child


def _check_forest(forest: rcf.Forest, trees: int, samples: int, points: np.ndarray) -> None:
    left, right, internal = forest.left, forest.right, forest.left >= 0
    # every node's box bounds its points: the hull of its children's boxes
    np.testing.assert_array_equal(
        forest.lo[internal], np.minimum(forest.lo[left[internal]], forest.lo[right[internal]])
    )
    np.testing.assert_array_equal(
        forest.hi[internal], np.maximum(forest.hi[left[internal]], forest.hi[right[internal]])
    )
    # each cut lies in its box's range and separates the children
    nodes, dims = np.flatnonzero(internal), forest.dim[internal]
    assert (forest.lo[nodes, dims] <= forest.cut[internal]).all()
    assert (forest.hi[left[internal], dims] <= forest.cut[internal]).all()
    assert (forest.lo[right[internal], dims] > forest.cut[internal]).all()
    # a leaf is one distinct point, its duplicates counted with it
    leaves = ~internal
    assert (forest.lo[leaves] == forest.hi[leaves]).all()
    assert forest.count[leaves].sum() == trees * samples
    # each tree's nodes are numbered together from its root
    assert len(forest.roots) == trees and forest.roots[0] == 0 and (np.diff(forest.roots) > 0).all()
    assert (forest.count[forest.roots] == samples).all()

    expected = [
        np.mean([_direct_codisp(forest, int(root), x) for root in forest.roots]) for x in points
    ]
    np.testing.assert_allclose(forest.score(points), expected, rtol=1e-12)
    assert forest.score(np.empty((0, points.shape[1]))).shape == (0,)


def test_vectorised_forest_is_the_robust_random_cut_forest() -> None:
    rng = np.random.default_rng(7)
    data = np.vstack([rng.normal(size=(400, 3)), np.repeat([[5.0, 5.0, 5.0]], 20, axis=0)])
    forest = rcf.Forest.build(data, 7, 64, np.random.default_rng(0))
    points = np.vstack([rng.normal(size=(30, 3)), [[5.0, 5.0, 5.0], [9.0, -9.0, 0.0]]])
    _check_forest(forest, 7, 64, points)
    assert forest.count[forest.left < 0].max() > 1  # the duplicates of (5, 5, 5)


def test_wide_data_grows_its_trees_in_groups() -> None:
    rng = np.random.default_rng(8)
    data = rng.normal(size=(600, 2500))  # a few trees at a time keep their points in cache
    forest = rcf.Forest.build(data, 3, 256, np.random.default_rng(0))
    _check_forest(forest, 3, 256, np.vstack([data[:3], rng.normal(size=(3, 2500)) * 3]))
