"""Built-in algorithms through boto3, as SageMaker users run them: an official image URI,
hyperparameters and channels, no script. Quality is checked against the reference library run
directly in the test; the model is read back from the job's model.tar.gz and served through the
algorithm's inference handlers."""

from __future__ import annotations

import importlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SalviaServer, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
ACCOUNT = "382416733822.dkr.ecr.us-east-1.amazonaws.com"


def csv_bytes(features: np.ndarray, labels: np.ndarray | None = None) -> bytes:
    rows = features if labels is None else np.column_stack([labels, features])
    buffer = io.StringIO()
    np.savetxt(buffer, rows, delimiter=",", fmt="%.10g")
    return buffer.getvalue().encode()


@dataclass
class Case:
    algorithm: str  # module name under salvia.algorithms
    image: str
    hyperparameters: dict[str, str]
    # -> ({channel: (file bytes, content type)}, test features, test labels)
    data: Callable[[], tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]]
    # (predictions of our handlers, test features, test labels) -> asserts quality
    check: Callable[[list[dict[str, Any]], np.ndarray, np.ndarray], None]
    metric: str | None  # a predefined metric that must appear in FinalMetricDataList
    request_type: str = "text/csv"
    response_key: str = "predictions"  # PCA answers "projections", RCF "scores"


def breast_cancer() -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0)
    channels = {
        "train": (csv_bytes(xtr, ytr), "text/csv"),
        "validation": (csv_bytes(xte, yte), "text/csv"),
    }
    return channels, xte, yte


def linear_learner_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xa, ya = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(xa, ya, test_size=0.25, random_state=0)
    reference = make_pipeline(StandardScaler(), LogisticRegression()).fit(xtr, ytr).score(xte, yte)
    ours = np.mean([p["predicted_label"] == label for p, label in zip(predictions, y, strict=True)])
    assert ours >= reference - 0.02, (ours, reference)
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)


def ratings() -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    from scipy import sparse

    from salvia.algorithms import recordio

    rng = np.random.default_rng(0)
    users, items, n = 100, 80, 8000
    u, i = rng.integers(0, users, n), rng.integers(0, items, n)
    pu, qi = rng.normal(size=(users, 3)), rng.normal(size=(items, 3))
    y = (3 + (pu[u] * qi[i]).sum(axis=1) + rng.normal(scale=0.3, size=n)).astype(np.float32)
    features = sparse.csr_matrix(
        (
            np.ones(2 * n, dtype=np.float32),
            (np.repeat(np.arange(n), 2), np.column_stack([u, users + i]).ravel()),
        ),
        shape=(n, users + items),
    )
    split = int(n * 0.8)
    buffer = io.BytesIO()
    recordio.write_dataset(buffer, features[:split], y[:split])
    test = np.asarray(features[split:].todense())
    return {"train": (buffer.getvalue(), "application/x-recordio-protobuf")}, test, y[split:]


def fm_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    rmse = float(np.sqrt(np.mean((np.array([p["score"] for p in predictions]) - y) ** 2)))
    baseline = float(np.sqrt(np.mean((y.mean() - y) ** 2)))
    assert rmse < 0.8 * baseline, (rmse, baseline)


def iris_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    x, y = load_iris(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0)
    return xtr, xte, ytr, yte


def iris_labeled() -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    xtr, xte, ytr, yte = iris_split()
    return (
        {
            "train": (csv_bytes(xtr, ytr), "text/csv"),
            "validation": (csv_bytes(xte, yte), "text/csv"),
        },
        xte,
        yte,
    )


def iris_unlabeled() -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    xtr, xte, _, yte = iris_split()
    return {"train": (csv_bytes(xtr), "text/csv")}, xte, yte


def iris_knn() -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    xtr, xte, ytr, yte = iris_split()
    return {"train": (csv_bytes(xtr, ytr), "text/csv")}, xte, yte


def xgboost_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    import xgboost as xgb
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    xa, ya = load_breast_cancer(return_X_y=True)
    xtr, _, ytr, _ = train_test_split(xa, ya, test_size=0.25, random_state=0)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(xtr, label=ytr), num_boost_round=20)
    expected = booster.predict(xgb.DMatrix(x))
    ours = np.array([p["score"] for p in predictions])
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def tabular_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    labels = np.array([p["predicted_label"] for p in predictions], dtype=float)
    assert np.mean(labels == y) >= 0.9


def kmeans_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    from sklearn.cluster import KMeans

    xtr, _, _, _ = iris_split()
    reference = KMeans(n_clusters=3, n_init=10, random_state=0).fit(xtr)
    ours = sum(p["distance_to_cluster"] ** 2 for p in predictions)
    theirs = float(-reference.score(x))
    assert ours <= theirs * 1.02, (ours, theirs)


def pca_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    from sklearn.decomposition import PCA

    xtr, _, _, _ = iris_split()
    expected = PCA(n_components=2).fit(xtr).transform(x)
    ours = np.array([p["projection"] for p in predictions])
    np.testing.assert_allclose(np.abs(ours), np.abs(expected), atol=1e-6)


def knn_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    xtr, _, ytr, _ = iris_split()
    reference = KNeighborsClassifier(n_neighbors=5).fit(xtr, ytr).score(x, y)
    ours = np.mean([p["predicted_label"] == label for p, label in zip(predictions, y, strict=True)])
    assert ours == reference


def anomalies() -> tuple[dict[str, tuple[bytes, str]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    inliers = rng.normal(size=(1500, 4))
    outliers = rng.uniform(6, 9, size=(45, 4)) * rng.choice([-1, 1], size=(45, 4))
    x = np.vstack([inliers, outliers])
    y = np.r_[np.zeros(len(inliers)), np.ones(len(outliers))]
    return {"train": (csv_bytes(x), "text/csv")}, x, y


def rcf_quality(predictions: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> None:
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, [p["score"] for p in predictions]) >= 0.9


CASES = [
    Case(
        "xgboost",
        f"{ACCOUNT}/sagemaker-xgboost:1.7-1",
        {
            "objective": "binary:logistic",
            "num_round": "20",
            "max_depth": "3",
            "eta": "0.3",
            "seed": "0",
        },
        breast_cancer,
        xgboost_quality,
        "validation:logloss",
    ),
    Case(
        "lightgbm",
        "salvia/lightgbm",
        {"num_boost_round": "50"},
        iris_labeled,
        tabular_quality,
        None,
    ),
    Case("catboost", "salvia/catboost", {"iterations": "100"}, iris_labeled, tabular_quality, None),
    Case(
        "kmeans",
        f"{ACCOUNT}/kmeans:1",
        {"k": "3", "feature_dim": "4"},
        iris_unlabeled,
        kmeans_quality,
        "train:msd",
    ),
    Case(
        "pca",
        f"{ACCOUNT}/pca:1",
        {"num_components": "2", "feature_dim": "4", "mini_batch_size": "50"},
        iris_unlabeled,
        pca_quality,
        None,
        response_key="projections",
    ),
    Case(
        "knn",
        f"{ACCOUNT}/knn:1",
        {"k": "5", "sample_size": "200", "predictor_type": "classifier", "feature_dim": "4"},
        iris_knn,
        knn_quality,
        None,
    ),
    Case(
        "random_cut_forest",
        f"{ACCOUNT}/randomcutforest:1",
        {"num_trees": "50", "num_samples_per_tree": "256", "feature_dim": "4"},
        anomalies,
        rcf_quality,
        None,
        response_key="scores",
    ),
    Case(
        "linear_learner",
        f"{ACCOUNT}/linear-learner:1",
        {"predictor_type": "binary_classifier", "mini_batch_size": "32", "wd": "0.0023"},
        breast_cancer,
        linear_learner_quality,
        "validation:binary_classification_accuracy",
    ),
    Case(
        "factorization_machines",
        f"{ACCOUNT}/factorization-machines:1",
        {
            "feature_dim": "180",
            "num_factors": "8",
            "predictor_type": "regressor",
            "epochs": "20",
            "mini_batch_size": "200",
            "bias_lr": "0.01",
            "linear_lr": "0.01",
            "factors_lr": "0.01",
        },
        ratings,
        fm_quality,
        "train:rmse",
        request_type="application/json",
    ),
]


def wait(sm: Any, name: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = sm.describe_training_job(TrainingJobName=name)
        if job["TrainingJobStatus"] in {"Completed", "Failed", "Stopped"}:
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"{name} did not finish")


def start_job(server: SalviaServer, case: Case, hyperparameters: dict[str, str]) -> str:
    s3, sm = server.client("s3"), server.client()
    if "algorithms" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="algorithms")
    name = unique(case.algorithm.replace("_", "-")[:20])
    channels, _, _ = case.data()
    input_config = []
    for channel, (body, content_type) in channels.items():
        s3.put_object(Bucket="algorithms", Key=f"{name}/{channel}/data", Body=body)
        input_config.append(
            {
                "ChannelName": channel,
                "ContentType": content_type,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://algorithms/{name}/{channel}/",
                    }
                },
            }
        )
    sm.create_training_job(
        TrainingJobName=name,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": case.image, "TrainingInputMode": "File"},
        HyperParameters=hyperparameters,
        InputDataConfig=input_config,
        OutputDataConfig={"S3OutputPath": "s3://algorithms/output"},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    return name


def available(case: Case) -> Any:
    try:
        return importlib.import_module(f"salvia.algorithms.{case.algorithm}")
    except ModuleNotFoundError:
        pytest.skip(f"{case.algorithm} is not built yet")


@pytest.mark.parametrize("case", CASES, ids=[c.algorithm for c in CASES])
def test_algorithm_trains_through_boto3_and_serves_its_model(
    server: SalviaServer, case: Case, tmp_path: Path
) -> None:
    pytest.importorskip("sklearn")
    module = available(case)
    sm = server.client()
    name = start_job(server, case, case.hyperparameters)
    job = wait(sm, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    metrics = {m["MetricName"] for m in job.get("FinalMetricDataList", [])}
    if case.metric:  # predefined: no MetricDefinitions were sent
        assert case.metric in metrics, metrics
    key = job["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://algorithms/")
    blob = server.client("s3").get_object(Bucket="algorithms", Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        archive.extractall(tmp_path / "model", filter="data")
    _, x, y = case.data()
    model = module.model_fn(str(tmp_path / "model"))
    if case.request_type == "application/json":
        body = json.dumps({"instances": [{"features": row.tolist()} for row in x]})
    else:
        body = csv_bytes(x).decode()
    predictions = module.predict_fn(module.input_fn(body, case.request_type), model)
    response, content_type = module.output_fn(predictions, "application/json")
    parsed = json.loads(response)[case.response_key]
    assert content_type.startswith("application/json") and len(parsed) == len(y)
    case.check(parsed, x, y)


@pytest.mark.parametrize("case", CASES[-2:-1], ids=[c.algorithm for c in CASES[-2:-1]])
def test_a_missing_required_hyperparameter_fails_the_job_at_once(
    server: SalviaServer, case: Case
) -> None:
    available(case)
    name = start_job(server, case, {"mini_batch_size": "32"})
    job = wait(server.client(), name, timeout=60)
    assert job["TrainingJobStatus"] == "Failed"
    assert "predictor_type" in job["FailureReason"]


def test_a_built_in_algorithm_model_is_served_by_an_endpoint(server: SalviaServer) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("salvia.serving.model_server")
    case = next(c for c in CASES if c.algorithm == "kmeans")
    available(case)
    sm, runtime = server.client(), server.client("sagemaker-runtime")
    name = start_job(server, case, case.hyperparameters)
    job = wait(sm, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": case.image,
            "ModelDataUrl": job["ModelArtifacts"]["S3ModelArtifacts"],
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300}
    )
    _, x, _ = case.data()
    response = runtime.invoke_endpoint(
        EndpointName=name, ContentType="text/csv", Accept="application/json", Body=csv_bytes(x[:5])
    )
    predictions = json.loads(response["Body"].read())["predictions"]
    assert len(predictions) == 5
    assert {"closest_cluster", "distance_to_cluster"} <= set(predictions[0])
    sm.delete_endpoint(EndpointName=name)
