"""A small, real demo, seeded through the public API (S3 and SageMaker) like any user would.

It generates a regression data set, uploads it to the object store, fits a linear model by
gradient descent, and records the run as an experiment: parameters, input artifact, and the
loss of every epoch as metrics.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

EXPERIMENT = "salvia-demo"
BUCKET = "salvia-demo"


def _clients(url: str, region: str) -> tuple[Any, Any, Any]:
    def make(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=url,
            region_name=region,
            aws_access_key_id="salvia-demo",
            aws_secret_access_key="salvia-demo",
            config=Config(retries={"max_attempts": 3}),
        )

    return make("sagemaker"), make("sagemaker-metrics"), make("s3")


def make_data(rows: int = 400, seed: int = 7) -> list[tuple[float, float, float]]:
    rng = random.Random(seed)
    data = []
    for _ in range(rows):
        x1, x2 = rng.uniform(-2, 2), rng.uniform(-2, 2)
        data.append((3.0 * x1 - 2.0 * x2 + 0.5 + rng.gauss(0, 0.1), x1, x2))
    return data


def fit(data: list[tuple[float, float, float]], lr: float, epochs: int) -> list[float]:
    """Full-batch gradient descent on mean squared error; the loss after each epoch."""
    w1 = w2 = b = 0.0
    losses = []
    n = len(data)
    for _ in range(epochs):
        g1 = g2 = gb = loss = 0.0
        for y, x1, x2 in data:
            error = w1 * x1 + w2 * x2 + b - y
            loss += error * error
            g1, g2, gb = g1 + error * x1, g2 + error * x2, gb + error
        w1, w2, b = w1 - lr * 2 * g1 / n, w2 - lr * 2 * g2 / n, b - lr * 2 * gb / n
        losses.append(loss / n)
    return losses


def seed_demo(url: str, region: str = "us-east-1") -> bool:
    """Create the demo experiment unless it exists; True when it was created now."""
    sm, metrics, s3 = _clients(url, region)
    try:
        sm.describe_experiment(ExperimentName=EXPERIMENT)
        return False
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceNotFound":
            raise
    data = make_data()
    buffer = io.StringIO()
    csv.writer(buffer).writerows(data)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    s3.put_object(Bucket=BUCKET, Key="data/train.csv", Body=buffer.getvalue().encode())

    sm.create_experiment(ExperimentName=EXPERIMENT, Description="Linear regression, seeded demo")
    sm.create_trial(TrialName=f"{EXPERIMENT}-trial", ExperimentName=EXPERIMENT)
    component = f"{EXPERIMENT}-linear-regression"
    lr, epochs = 0.1, 60
    sm.create_trial_component(
        TrialComponentName=component,
        Status={"PrimaryStatus": "InProgress"},
        StartTime=time.time(),
        Parameters={"learning_rate": {"NumberValue": lr}, "epochs": {"NumberValue": epochs}},
        InputArtifacts={
            "train": {"MediaType": "text/csv", "Value": f"s3://{BUCKET}/data/train.csv"}
        },
    )
    sm.associate_trial_component(TrialComponentName=component, TrialName=f"{EXPERIMENT}-trial")
    now = time.time()
    losses = fit(data, lr, epochs)
    points = [
        {"MetricName": "train:mse", "Timestamp": now + step, "Step": step, "Value": loss}
        for step, loss in enumerate(losses)
    ]
    for start in range(0, len(points), 10):
        metrics.batch_put_metrics(
            TrialComponentName=component, MetricData=points[start : start + 10]
        )
    sm.update_trial_component(
        TrialComponentName=component, Status={"PrimaryStatus": "Completed"}, EndTime=time.time()
    )
    log.info("demo experiment %r seeded (final train:mse %.4f)", EXPERIMENT, losses[-1])
    return True
