"""Linear Learner trained as SageMaker runs it (a subprocess over an /opt/ml-like directory),
compared with scikit-learn's LogisticRegression and LinearRegression on the same split."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from salvia.algorithms import linear_learner, recordio
from salvia.algorithms.base import AlgorithmError

from .harness import TrainingRun, run_training

MODULE = "salvia.algorithms.linear_learner"
RECORDIO = "application/x-recordio-protobuf"


def csv(features: np.ndarray, labels: np.ndarray) -> str:
    return (
        "\n".join(
            ",".join(map(repr, [float(y), *map(float, row)]))
            for y, row in zip(labels, features, strict=True)
        )
        + "\n"
    )


def records(features: np.ndarray, labels: np.ndarray) -> bytes:
    out = io.BytesIO()
    recordio.write_dataset(out, features.astype(np.float32), labels.astype(np.float32))
    return out.getvalue()


def metrics(run: TrainingRun) -> dict[str, float]:
    """The last value of each metric, read with the algorithm's own metric definitions."""
    found: dict[str, float] = {}
    for name, regex in linear_learner.SPEC.metrics:
        values = re.findall(regex, run.stdout)
        if values:
            found[name] = float(values[-1])
    return found


def split(features: np.ndarray, labels: np.ndarray, stratify: bool = True) -> list[np.ndarray]:
    parts: list[np.ndarray] = train_test_split(
        features, labels, test_size=0.25, random_state=0, stratify=labels if stratify else None
    )
    return parts


def sklearn_wd(train_rows: int) -> float:
    """LogisticRegression's default L2 (C=1 on the summed loss) as weight decay on the mean."""
    return 1.0 / train_rows


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingRun, float]:
    x_train, x_test, y_train, y_test = split(*load_breast_cancer(return_X_y=True))
    run = run_training(
        MODULE,
        tmp_path_factory.mktemp("ll-binary"),
        {
            "predictor_type": "binary_classifier",
            "mini_batch_size": 32,
            "wd": sklearn_wd(len(y_train)),
        },
        {
            "train": {"train.rec": records(x_train, y_train)},
            "test": {"test.rec": records(x_test, y_test)},
        },
        {"train": RECORDIO, "test": RECORDIO},
    )
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return run, float(reference.fit(x_train, y_train).score(x_test, y_test))


def test_binary_classifier_matches_logistic_regression(
    binary_run: tuple[TrainingRun, float],
) -> None:
    run, reference = binary_run
    assert run.returncode == 0, run.log
    found = metrics(run)
    accuracy = found["test:binary_classification_accuracy"]
    print(f"breast_cancer accuracy: linear-learner {accuracy:.4f}, sklearn {reference:.4f}")
    assert accuracy >= reference - 0.02
    assert found["test:roc_auc_score"] > 0.97
    assert 0 < found["test:objective_loss"] < 0.3
    assert {"test:precision", "test:recall", "test:binary_f_beta", "train:objective_loss"} <= set(
        found
    )
    assert (run.model_dir / linear_learner.MODEL_FILE).exists()


def test_multiclass_classifier_matches_logistic_regression(tmp_path: Path) -> None:
    x_train, x_test, y_train, y_test = split(*load_digits(return_X_y=True))
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.2, random_state=1, stratify=y_train
    )
    run = run_training(
        MODULE,
        tmp_path,
        {
            "predictor_type": "multiclass_classifier",
            "num_classes": 10,
            "mini_batch_size": 32,
            "wd": sklearn_wd(len(y_train)),
        },
        {
            "train": {"train.csv": csv(x_fit, y_fit)},
            "validation": {"v.csv": csv(x_val, y_val)},
            "test": {"test.csv": csv(x_test, y_test)},
        },
        {"train": "text/csv", "validation": "text/csv", "test": "text/csv"},
    )
    assert run.returncode == 0, run.log
    reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    expected = reference.fit(x_train, y_train).score(x_test, y_test)
    found = metrics(run)
    accuracy = found["test:multiclass_accuracy"]
    print(f"digits accuracy: linear-learner {accuracy:.4f}, sklearn {expected:.4f}")
    assert accuracy >= expected - 0.02
    assert found["validation:multiclass_accuracy"] > 0.9
    assert found["test:multiclass_top_k_accuracy"] >= accuracy
    assert {"test:macro_f_beta", "test:dcg", "validation:objective_loss"} <= set(found)


def test_regressor_is_close_to_linear_regression(tmp_path: Path) -> None:
    features, target = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = split(features, target, stratify=False)
    run = run_training(
        MODULE,
        tmp_path,
        {"predictor_type": "regressor", "mini_batch_size": 32, "wd": 0, "epochs": 30},
        {"train": {"train.csv": csv(x_train, y_train)}, "test": {"test.csv": csv(x_test, y_test)}},
    )
    assert run.returncode == 0, run.log
    predicted = LinearRegression().fit(x_train, y_train).predict(x_test)
    expected = float(np.sqrt(np.mean((predicted - y_test) ** 2)))
    found = metrics(run)
    print(f"diabetes rmse: linear-learner {found['test:rmse']:.2f}, sklearn {expected:.2f}")
    assert found["test:rmse"] <= expected * 1.1
    assert found["test:rmse"] < float(np.std(y_test)) * 0.9  # far better than the mean
    assert found["test:mse"] == pytest.approx(found["test:rmse"] ** 2)


def test_inference_handlers_give_the_documented_responses(
    binary_run: tuple[TrainingRun, float],
) -> None:
    run, _ = binary_run
    model = linear_learner.model_fn(run.model_dir)
    x, y = load_breast_cancer(return_X_y=True)
    rows = x[:5]

    csv_body = "\n".join(",".join(map(str, row)) for row in rows)
    predictions = linear_learner.predict_fn(linear_learner.input_fn(csv_body, "text/csv"), model)
    body, content_type = linear_learner.output_fn(predictions, "application/json")
    assert content_type == "application/json"
    answer = json.loads(body)["predictions"]
    assert len(answer) == 5
    for item, label in zip(answer, y[:5], strict=True):
        assert set(item) == {"score", "predicted_label"}
        assert 0 <= item["score"] <= 1 and item["predicted_label"] in (0, 1)
        assert item["predicted_label"] == label  # these five are easy

    json_body = json.dumps({"instances": [{"features": row.tolist()} for row in rows]})
    again = linear_learner.predict_fn(linear_learner.input_fn(json_body, "application/json"), model)
    assert again == predictions

    lines, content_type = linear_learner.output_fn(predictions, "application/jsonlines")
    assert content_type == "application/jsonlines"
    assert [json.loads(line) for line in lines.decode().splitlines()] == answer

    text, content_type = linear_learner.output_fn(predictions, "text/csv")
    first = text.decode().splitlines()[0].split(",")
    assert content_type == "text/csv" and int(first[0]) == answer[0]["predicted_label"]
    assert float(first[1]) == pytest.approx(answer[0]["score"])

    protobuf = io.BytesIO()
    recordio.write_dataset(protobuf, rows.astype(np.float32))
    from_records = linear_learner.predict_fn(
        linear_learner.input_fn(protobuf.getvalue(), RECORDIO), model
    )
    assert [p["predicted_label"] for p in from_records] == [p["predicted_label"] for p in answer]
    out, content_type = linear_learner.output_fn(predictions, RECORDIO)
    labels = [recordio.decode_message(p)[1] for p in recordio.read_records(out)]
    assert content_type == RECORDIO
    assert labels[0]["score"].values[0] == pytest.approx(answer[0]["score"], rel=1e-6)

    with pytest.raises(AlgorithmError, match="features"):
        linear_learner.predict_fn(np.ones((1, 3)), model)


def test_multiclass_and_regressor_response_shapes(tmp_path: Path) -> None:
    model = {
        "W": np.eye(3),
        "b": np.zeros(3),
        "predictor_type": "multiclass_classifier",
        "loss": "softmax_loss",
        "threshold": 0.5,
        "num_classes": 3,
        "feature_dim": 3,
    }
    (prediction,) = linear_learner.predict_fn(np.array([[0.0, 5.0, 1.0]]), model)
    assert prediction["predicted_label"] == 1
    assert len(prediction["score"]) == 3 and sum(prediction["score"]) == pytest.approx(1)
    text, _ = linear_learner.output_fn([prediction], "text/csv")
    assert text.decode().startswith("1,")
    model.update(W=np.ones((3, 1)), b=np.array([0.5]), predictor_type="regressor")
    (value,) = linear_learner.predict_fn(np.array([[1.0, 2.0, 3.0]]), model)
    assert value == {"score": pytest.approx(6.5)}


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({}, "predictor_type"),
        ({"predictor_type": "multiclass_classifier"}, "num_classes"),
        ({"predictor_type": "binary_classifier", "loss": "squared_loss"}, "loss"),
        ({"predictor_type": "binary_classifier", "learning_rate": "fast"}, "learning_rate"),
        ({"predictor_type": "ranker"}, "predictor_type"),
        ({"predictor_type": "regressor", "epochs": 0}, "epochs"),
        ({"predictor_type": "regressor", "not_a_parameter": 1}, "not_a_parameter"),
    ],
)
def test_bad_hyperparameters_fail_the_job(
    tmp_path: Path, hyperparameters: dict[str, object], named: str
) -> None:
    run = run_training(MODULE, tmp_path, hyperparameters, {"train": {"t.csv": "1,2,3\n0,1,1\n"}})
    assert run.returncode != 0
    assert run.failure is not None and named in run.failure, run.log


def test_labels_outside_the_predictor_type_fail_the_job(tmp_path: Path) -> None:
    run = run_training(
        MODULE,
        tmp_path,
        {"predictor_type": "binary_classifier"},
        {"train": {"t.csv": "2,1,1\n0,1,2\n"}},
    )
    assert run.returncode != 0
    assert run.failure is not None and "0 or 1" in run.failure
