"""The SageMaker Python SDK's experiment tracking, unchanged, against Salvia.

Only the endpoint changes (`AWS_ENDPOINT_URL`), plus `default_bucket`, without which the SDK asks
real STS for the account id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from tests.conftest import SalviaServer

# SDK v2 (the one in use and documented in shared/reference) warns that v3 exists.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def sagemaker_session(server: SalviaServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    sagemaker = pytest.importorskip("sagemaker")
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = server.client("s3")
    if "sdk-bucket" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="sdk-bucket")
    yield sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1"), default_bucket="sdk-bucket"
    )


def test_run_logs_parameters_metrics_and_files(
    sagemaker_session: Any, server: SalviaServer, tmp_path: Any
) -> None:
    from sagemaker.experiments import Run, list_runs, load_run

    experiment = f"sdk-{id(tmp_path) % 10**8}"
    notes = tmp_path / "notes.txt"
    notes.write_text("trained on generated data")
    with Run(
        experiment_name=experiment, run_name="first", sagemaker_session=sagemaker_session
    ) as run:
        run.log_parameters({"lr": 0.01, "optimizer": "adam"})
        for step, loss in enumerate([1.0, 0.5, 0.25, 0.2]):
            run.log_metric(name="loss", value=loss, step=step)
        run.log_file(str(notes), name="notes", is_output=True)

    with load_run(
        experiment_name=experiment, run_name="first", sagemaker_session=sagemaker_session
    ) as run:
        run.log_parameter("epochs", 5)

    with Run(
        experiment_name=experiment, run_name="second", sagemaker_session=sagemaker_session
    ) as run:
        run.log_metric(name="loss", value=0.9, step=0)

    runs = list_runs(experiment_name=experiment, sagemaker_session=sagemaker_session)
    assert sorted(r.run_name for r in runs) == ["first", "second"]

    sm = server.client()
    components = sm.list_trial_components(ExperimentName=experiment)["TrialComponentSummaries"]
    first = next(c for c in components if c["TrialComponentName"].endswith("first"))
    described = sm.describe_trial_component(TrialComponentName=first["TrialComponentName"])
    assert described["Parameters"]["lr"] == {"NumberValue": 0.01}
    assert described["Parameters"]["optimizer"] == {"StringValue": "adam"}
    assert described["Parameters"]["epochs"] == {"NumberValue": 5.0}
    assert described["Status"]["PrimaryStatus"] == "Completed"
    (loss,) = described["Metrics"]
    assert (loss["MetricName"], loss["Count"], loss["Min"], loss["Last"]) == ("loss", 4, 0.2, 0.2)
    uploaded = described["OutputArtifacts"]["notes"]["Value"]
    bucket, key = uploaded.removeprefix("s3://").split("/", 1)
    body = server.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"trained on generated data"


def test_experiment_analytics_builds_a_dataframe(sagemaker_session: Any, tmp_path: Any) -> None:
    from sagemaker.analytics import ExperimentAnalytics
    from sagemaker.experiments import Run

    experiment = f"sdk-analytics-{id(tmp_path) % 10**8}"
    for name, lr, accuracy in [("slow", 0.001, 0.8), ("fast", 0.1, 0.9)]:
        with Run(
            experiment_name=experiment, run_name=name, sagemaker_session=sagemaker_session
        ) as run:
            run.log_parameter("lr", lr)
            run.log_metric(name="accuracy", value=accuracy, step=0)

    frame = ExperimentAnalytics(
        experiment_name=experiment,
        sagemaker_session=sagemaker_session,
        sort_by="metrics.accuracy.max",
        sort_order="Descending",
    ).dataframe()
    assert len(frame) == 2
    assert sorted(frame["lr"]) == [0.001, 0.1]
    assert sorted(frame["accuracy - Max"]) == [0.8, 0.9]
