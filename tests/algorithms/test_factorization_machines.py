"""Factorization Machines trained as SageMaker runs it, on a synthetic MovieLens-like rating
set: one-hot users and items, ratings from biases plus a low-rank interaction plus noise."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import sparse

from salvia.algorithms import factorization_machines as fm
from salvia.algorithms import recordio
from salvia.algorithms.base import AlgorithmError

from .harness import TrainingRun, run_training

MODULE = "salvia.algorithms.factorization_machines"
RECORDIO = "application/x-recordio-protobuf"
USERS, ITEMS = 300, 200
TRAINING = {
    "num_factors": 8,
    "epochs": 20,
    "mini_batch_size": 200,
    "bias_lr": 0.01,
    "linear_lr": 0.01,
    "factors_lr": 0.01,
}


def ratings(rows: int = 30000, seed: int = 0) -> tuple[sparse.csr_matrix, np.ndarray]:
    rng = np.random.default_rng(seed)
    users, items = rng.normal(0, 1, (USERS, 4)), rng.normal(0, 1, (ITEMS, 4))
    user_bias, item_bias = rng.normal(0, 0.5, USERS), rng.normal(0, 0.5, ITEMS)
    u, i = rng.integers(0, USERS, rows), rng.integers(0, ITEMS, rows)
    rating = 3 + user_bias[u] + item_bias[i] + (users[u] * items[i]).sum(axis=1)
    rating += rng.normal(0, 0.5, rows)
    columns = np.c_[u, USERS + i].ravel()
    one_hot = sparse.csr_matrix(
        (np.ones(2 * rows, np.float32), columns, np.arange(0, 2 * rows + 1, 2)),
        shape=(rows, USERS + ITEMS),
    )
    return one_hot, rating


def records(features: Any, labels: np.ndarray, dtype: Any = np.float32) -> bytes:
    out = io.BytesIO()
    recordio.write_dataset(out, features.astype(dtype), labels.astype(dtype))
    return out.getvalue()


def metrics(run: TrainingRun) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, regex in fm.SPEC.metrics:
        values = re.findall(regex, run.stdout)
        if values:
            found[name] = float(values[-1])
    return found


def train(root: Path, predictor_type: str, binary: bool = False) -> tuple[TrainingRun, float]:
    features, rating = ratings()
    labels = (rating > np.median(rating)).astype(float) if binary else rating
    cut = int(0.8 * len(labels))
    run = run_training(
        MODULE,
        root,
        {"feature_dim": USERS + ITEMS, "predictor_type": predictor_type, **TRAINING},
        {
            "train": {"train.rec": records(features[:cut], labels[:cut])},
            "test": {"test.rec": records(features[cut:], labels[cut:])},
        },
        {"train": RECORDIO, "test": RECORDIO},
    )
    if binary:
        majority = max(labels[cut:].mean(), 1 - labels[cut:].mean())
        return run, float(majority)
    return run, float(np.sqrt(np.mean((labels[cut:] - labels[:cut].mean()) ** 2)))


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingRun, float]:
    return train(tmp_path_factory.mktemp("fm-regressor"), "regressor")


def test_regressor_beats_the_mean_rating(regressor: tuple[TrainingRun, float]) -> None:
    run, baseline = regressor
    assert run.returncode == 0, run.log
    rmse = metrics(run)["test:rmse"]
    print(f"test rmse: factorization machines {rmse:.3f}, mean rating {baseline:.3f}")
    assert rmse < 0.5 * baseline
    assert "train:rmse" in metrics(run)
    assert (run.model_dir / fm.MODEL_FILE).exists()


def test_binary_classifier_beats_the_majority_class(tmp_path: Path) -> None:
    run, majority = train(tmp_path, "binary_classifier", binary=True)
    assert run.returncode == 0, run.log
    found = metrics(run)
    accuracy = found["test:binary_classification_accuracy"]
    print(f"test accuracy: factorization machines {accuracy:.3f}, majority {majority:.3f}")
    assert accuracy > majority + 0.25
    assert 0 < found["test:binary_classification_cross_entropy"] < 0.5
    assert found["test:binary_f_beta"] > 0.75
    model = fm.model_fn(run.model_dir)
    body = json.dumps(
        {
            "instances": [
                {
                    "data": {
                        "features": {"keys": [0, USERS], "shape": [USERS + ITEMS], "values": [1, 1]}
                    }
                }
            ]
        }
    )
    (prediction,) = fm.predict_fn(fm.input_fn(body, "application/json"), model)
    assert set(prediction) == {"score", "predicted_label"}
    assert 0 <= prediction["score"] <= 1
    assert prediction["predicted_label"] == int(prediction["score"] >= 0.5)


def test_inference_handlers_give_the_documented_responses(
    regressor: tuple[TrainingRun, float],
) -> None:
    run, _ = regressor
    model = fm.model_fn(run.model_dir)
    features, rating = ratings()
    features, rating = features[-4:], rating[-4:]  # held-out rows of the same world

    sparse_json = json.dumps(
        {
            "instances": [
                {
                    "data": {
                        "features": {
                            "keys": row.indices.tolist(),
                            "shape": [USERS + ITEMS],
                            "values": row.data.tolist(),
                        }
                    }
                }
                for row in features
            ]
        }
    )
    predictions = fm.predict_fn(fm.input_fn(sparse_json, "application/json"), model)
    body, content_type = fm.output_fn(predictions, "application/json")
    answer = json.loads(body)["predictions"]
    assert content_type == "application/json" and len(answer) == 4
    assert all(set(item) == {"score"} for item in answer)
    assert np.sqrt(np.mean((np.array([a["score"] for a in answer]) - rating) ** 2)) < 1.5

    dense_json = json.dumps(
        {"instances": [{"features": row} for row in features.toarray().tolist()]}
    )
    scores = [p["score"] for p in predictions]
    from_dense = fm.predict_fn(fm.input_fn(dense_json, "application/json"), model)
    assert [p["score"] for p in from_dense] == pytest.approx(scores)
    lines = "\n".join(json.dumps({"features": row}) for row in features.toarray().tolist())
    from_lines = fm.predict_fn(fm.input_fn(lines, "application/jsonlines"), model)
    assert [p["score"] for p in from_lines] == pytest.approx(scores)
    out, content_type = fm.output_fn(predictions, "application/jsonlines")
    assert content_type == "application/jsonlines"
    assert [json.loads(line) for line in out.decode().splitlines()] == answer

    protobuf = io.BytesIO()
    recordio.write_dataset(protobuf, features)
    from_records = fm.predict_fn(fm.input_fn(protobuf.getvalue(), RECORDIO), model)
    assert [p["score"] for p in from_records] == pytest.approx(scores)
    out, content_type = fm.output_fn(predictions, RECORDIO)
    decoded = [recordio.decode_message(p)[1]["score"].values[0] for p in recordio.read_records(out)]
    assert content_type == RECORDIO
    assert decoded == pytest.approx([a["score"] for a in answer], rel=1e-6)

    with pytest.raises(AlgorithmError, match="not supported"):
        fm.input_fn("1,0,1", "text/csv")  # SageMaker's factorization machines take no CSV
    with pytest.raises(AlgorithmError, match="features"):
        fm.predict_fn(sparse.csr_matrix(np.ones((1, USERS + ITEMS + 1))), model)


def test_only_float32_recordio_protobuf_is_accepted(tmp_path: Path) -> None:
    features, rating = ratings(rows=50)
    hyperparameters = {
        "feature_dim": USERS + ITEMS,
        "num_factors": 4,
        "predictor_type": "regressor",
    }
    run = run_training(
        MODULE,
        tmp_path / "csv",
        hyperparameters,
        {"train": {"t.csv": "1,0,1\n"}},
        {"train": "text/csv"},
    )
    assert run.returncode != 0
    assert run.failure is not None and "text/csv" in run.failure
    run = run_training(
        MODULE,
        tmp_path / "f64",
        hyperparameters,
        {"train": {"t.rec": records(features, rating, np.float64)}},
        {"train": RECORDIO},
    )
    assert run.returncode != 0
    assert run.failure is not None and "Float32" in run.failure


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"num_factors": 4, "predictor_type": "regressor"}, "feature_dim"),
        ({"feature_dim": 500, "predictor_type": "regressor"}, "num_factors"),
        ({"feature_dim": 500, "num_factors": 4}, "predictor_type"),
        (
            {"feature_dim": 500, "num_factors": 4, "predictor_type": "multiclass_classifier"},
            "predictor_type",
        ),
        ({"feature_dim": 100, "num_factors": 4, "predictor_type": "regressor"}, "feature_dim"),
        (
            {
                "feature_dim": 500,
                "num_factors": 4,
                "predictor_type": "regressor",
                "factors_init_method": "uniform",
            },
            "factors_init_scale",
        ),
        (
            {"feature_dim": 500, "num_factors": 4, "predictor_type": "regressor", "bias_lr": -1},
            "bias_lr",
        ),
    ],
)
def test_bad_hyperparameters_fail_the_job(
    tmp_path: Path, hyperparameters: dict[str, object], named: str
) -> None:
    features, rating = ratings(rows=50)
    run = run_training(
        MODULE,
        tmp_path,
        hyperparameters,
        {"train": {"t.rec": records(features, rating)}},
        {"train": RECORDIO},
    )
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure, run.log
