"""Managed MLflow through boto3: a tracking server created by the API is a real `mlflow server`;
a training job given its ARN as MLFLOW_TRACKING_URI logs a run there, read back with the
`mlflow` client; the server stops, starts and is deleted."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_training import job_request, wait
from tests.conftest import SalviaServer, unique

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

LOGGING_SCRIPT = """
import mlflow

mlflow.set_experiment("salvia-managed")
with mlflow.start_run(run_name="from-a-training-job"):
    mlflow.log_param("alpha", 0.5)
    mlflow.log_metric("accuracy", 0.93)
    mlflow.log_text("made on Salvia", "notes.txt")
"""


def until(sm: Any, name: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = sm.describe_mlflow_tracking_server(TrackingServerName=name)
        if found["TrackingServerStatus"] in statuses:
            return dict(found)
        assert time.monotonic() < deadline, found
        time.sleep(0.3)


@pytest.mark.slow  # two MLflow server starts (its imports and schema migrations) and a job
def test_a_training_job_logs_to_a_managed_tracking_server(server: SalviaServer) -> None:
    mlflow = pytest.importorskip("mlflow")
    sm, s3 = server.client(), server.client("s3")
    bucket = unique("mlflow")
    s3.create_bucket(Bucket=bucket)
    name = unique("tracking")
    arn = sm.create_mlflow_tracking_server(
        TrackingServerName=name,
        ArtifactStoreUri=f"s3://{bucket}/artifacts",
        RoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
    )["TrackingServerArn"]
    assert arn.endswith(f":mlflow-tracking-server/{name}")
    described = until(sm, name, {"Created", "CreateFailed"})
    assert described["TrackingServerStatus"] == "Created", described
    assert described["IsActive"] == "Active"
    url = described["TrackingServerUrl"]
    assert sm.create_presigned_mlflow_tracking_server_url(TrackingServerName=name)[
        "AuthorizedUrl"
    ].startswith(url)

    job = unique("logs-to-mlflow")
    request = job_request(server, bucket, job, LOGGING_SCRIPT,
                          Environment={"MLFLOW_TRACKING_URI": arn})  # fmt: skip
    sm.create_training_job(**request)
    finished = wait(sm, job, timeout=180)
    assert finished["TrainingJobStatus"] == "Completed", finished.get("FailureReason")

    client = mlflow.tracking.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("salvia-managed")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.metrics["accuracy"] == pytest.approx(0.93)
    assert runs[0].data.params["alpha"] == "0.5"
    listed = [a.path for a in client.list_artifacts(runs[0].info.run_id)]
    assert listed == ["notes.txt"]  # stored through the artifact proxy in Salvia's S3

    summaries = sm.list_mlflow_tracking_servers()["TrackingServerSummaries"]
    assert name in {s["TrackingServerName"] for s in summaries}
    sm.stop_mlflow_tracking_server(TrackingServerName=name)
    assert until(sm, name, {"Stopped"})["IsActive"] == "Inactive"
    sm.start_mlflow_tracking_server(TrackingServerName=name)
    restarted = until(sm, name, {"Started", "StartFailed"})
    assert restarted["TrackingServerStatus"] == "Started"
    again = mlflow.tracking.MlflowClient(tracking_uri=restarted["TrackingServerUrl"])
    assert again.get_experiment_by_name("salvia-managed") is not None  # its store was kept
    sm.delete_mlflow_tracking_server(TrackingServerName=name)
    deadline = time.monotonic() + 60
    while True:
        try:
            sm.describe_mlflow_tracking_server(TrackingServerName=name)
        except ClientError as gone:
            assert gone.response["Error"]["Code"] == "ResourceNotFound"
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_tracking_server_requests_are_validated(server: SalviaServer) -> None:
    sm = server.client()
    with pytest.raises(ClientError) as refused:
        sm.create_mlflow_tracking_server(
            TrackingServerName=unique("bad"), ArtifactStoreUri="/tmp/artifacts", RoleArn="arn:r"
        )
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as missing:
        sm.stop_mlflow_tracking_server(TrackingServerName="nowhere")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"
