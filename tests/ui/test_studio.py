"""Studio in a real browser: a user's resources, created with boto3, seen and acted on in the
pages; every page loads with no console error and no request leaving this machine."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import SalviaServer, unique
from tests.ui.conftest import TABLET, Visit

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
BUCKET = "studio-data"  # a bucket named "studio" is reachable only signed: /studio is Studio

TRAIN = """
import argparse, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--rate", type=float, default=0.5)
parser.add_argument("--epochs", type=int, default=4)
args = parser.parse_args()
loss = 1.0
for epoch in range(args.epochs):
    loss *= args.rate
    print(f"epoch={epoch} loss={loss:.4f};", flush=True)
    time.sleep(0.4)
with open(os.path.join(os.environ["SM_MODEL_DIR"], "rate.txt"), "w") as out:
    out.write(str(args.rate))
"""

HANDLERS = """
import json

def model_fn(model_dir):
    with open(f"{model_dir}/factor.txt") as f:
        return float(f.read())

def input_fn(body, content_type):
    text = body if isinstance(body, str) else body.decode()
    return [float(v) for v in text.replace("\\n", ",").split(",") if v.strip()]

def predict_fn(data, factor):
    return [v * factor for v in data]

def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction}), "application/json"
"""

PROCESS = "import os; print(sorted(os.listdir('/opt/ml/processing/input/data'))); " + (
    "raise SystemExit('the data did not add up')"
)


def archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass(frozen=True)
class Seeded:
    training_job: str
    tuning_job: str
    endpoint: str
    group: str
    experiment: str
    component: str
    source: str
    processing_job: str
    transform_job: str


def training_request(name: str, source: str) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": "salvia/python",
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "loss", "Regex": r"loss=([0-9.]+);"}],
        },
        "HyperParameters": {
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(source),
            "rate": "0.5",
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/"}
                },
                "ContentType": "text/csv",
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
        "ResourceConfig": {"InstanceType": "local", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 120},
    }


@pytest.fixture(scope="module")
def seeded(studio_server: SalviaServer) -> Seeded:
    """What a user has made through the API: the jobs and the endpoint start here and finish
    while the first pages are looked at."""
    sm, s3 = studio_server.client(), studio_server.client("s3")
    metrics = studio_server.client("sagemaker-metrics")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data/train.csv", Body=b"1,2\n3,4\n")
    s3.put_object(Bucket=BUCKET, Key="code/sourcedir.tar.gz", Body=archive({"train.py": TRAIN}))
    source = f"s3://{BUCKET}/code/sourcedir.tar.gz"

    training_job = unique("train")
    sm.create_training_job(**training_request(training_job, source))

    tuning_job = unique("tune")[:32]
    definition = training_request("unused", source)
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning_job,
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "loss"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": {
                "ContinuousParameterRanges": [
                    {"Name": "rate", "MinValue": "0.1", "MaxValue": "0.9"}
                ]
            },
        },
        TrainingJobDefinition={
            "AlgorithmSpecification": definition["AlgorithmSpecification"],
            "RoleArn": ROLE,
            "StaticHyperParameters": {
                k: v for k, v in definition["HyperParameters"].items() if k != "rate"
            },
            "InputDataConfig": definition["InputDataConfig"],
            "OutputDataConfig": definition["OutputDataConfig"],
            "ResourceConfig": definition["ResourceConfig"],
            "StoppingCondition": definition["StoppingCondition"],
        },
    )

    endpoint = unique("ep")
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{endpoint}/model.tar.gz",
        Body=archive({"factor.txt": "2.5", "code/inference.py": HANDLERS}),
    )
    model_data = f"s3://{BUCKET}/{endpoint}/model.tar.gz"
    sm.create_model(
        ModelName=endpoint,
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": SKLEARN_IMAGE, "ModelDataUrl": model_data},
    )
    sm.create_endpoint_config(
        EndpointConfigName=endpoint,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": endpoint,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=endpoint)

    group = unique("models")
    sm.create_model_package_group(ModelPackageGroupName=group, ModelPackageGroupDescription="x")
    sm.create_model_package(
        ModelPackageGroupName=group,
        ModelPackageDescription="first",
        InferenceSpecification={
            "Containers": [{"Image": SKLEARN_IMAGE, "ModelDataUrl": model_data}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        ModelMetrics={
            "ModelQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": f"s3://{BUCKET}/m.json"}
            }
        },
        CustomerMetadataProperties={"accuracy": "0.93"},
    )

    experiment = unique("exp")
    sm.create_experiment(ExperimentName=experiment)
    sm.create_trial(TrialName=f"{experiment}-trial", ExperimentName=experiment)
    component = ""
    for run, lr in enumerate((0.1, 0.01)):
        component = f"{experiment}-run-{run}"
        sm.create_trial_component(
            TrialComponentName=component,
            Parameters={"lr": {"NumberValue": lr}},
            Status={"PrimaryStatus": "Completed"},
        )
        sm.associate_trial_component(TrialComponentName=component, TrialName=f"{experiment}-trial")
        metrics.batch_put_metrics(
            TrialComponentName=component,
            MetricData=[
                {"MetricName": "loss", "Timestamp": time.time(), "Step": step, "Value": lr / step}
                for step in range(1, 4)
            ],
        )
    for i in range(12):  # enough for a second page of ten
        sm.create_trial_component(TrialComponentName=f"{experiment}-extra-{i:02d}")
    processing_job = unique("fails")
    sm.create_processing_job(
        ProcessingJobName=processing_job,
        RoleArn=ROLE,
        AppSpecification={
            "ImageUri": SKLEARN_IMAGE,
            "ContainerEntrypoint": ["python3", "-c", PROCESS],
        },
        ProcessingInputs=[
            {
                "InputName": "data",
                "S3Input": {
                    "S3Uri": f"s3://{BUCKET}/data/",
                    "LocalPath": "/opt/ml/processing/input/data",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ],
        ProcessingResources={
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 1,
            }
        },
        StoppingCondition={"MaxRuntimeInSeconds": 60},
    )
    transform_job = unique("batch")
    sm.create_transform_job(
        TransformJobName=transform_job,
        ModelName=endpoint,
        TransformInput={
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/"}
            },
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/batch-out"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )
    return Seeded(
        training_job,
        tuning_job,
        endpoint,
        group,
        experiment,
        component,
        source,
        processing_job,
        transform_job,
    )


def wait_for(check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def finished(sm: Any, name: str) -> bool:
    status = sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"]
    assert status != "Failed", sm.describe_training_job(TrainingJobName=name)
    return status == "Completed"


def test_a_training_job_created_with_boto3_appears_with_its_metric_chart(
    visit: Visit, seeded: Seeded, studio_server: SalviaServer
) -> None:
    sm = studio_server.client()
    name = unique("follow")
    sm.create_training_job(**training_request(name, seeded.source))
    visit.open("/studio/training-jobs")
    assert visit.page.locator("#list").get_by_text(name).is_visible()

    # opened while the job runs: the log tail follows it, and the page renews when it ends
    visit.open(f"/studio/training-jobs/{name}")
    page = visit.page
    page.wait_for_function(
        "document.querySelector('.actions .status').textContent === 'Completed'", timeout=60_000
    )
    page.locator("#metric-chart .main-svg").first.wait_for()  # plotly drew it
    assert page.locator("#metric-chart .scatterlayer .point").count() == 4  # one per epoch
    assert "loss" in page.locator("#final-metrics").inner_text()
    assert "rate" in page.locator("#hyperparameters").inner_text()
    assert f"s3://{BUCKET}/data/" in page.locator("#channels").inner_text()
    assert "Completed" in page.locator("#timeline").inner_text()
    assert "epoch=3 loss=0.0625;" in page.locator("#log-tail").inner_text()
    assert "model.tar.gz" in page.locator("#artifacts").inner_text()
    download = page.locator("#model-artifacts a").get_attribute("href")
    with urllib.request.urlopen(studio_server.url + download, timeout=10) as packed:
        assert packed.read(2) == b"\x1f\x8b"  # the model, gzipped, through S3 GetObject
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Completed"
    visit.assert_clean()


def test_every_page_loads_cleanly_on_desktop_and_tablet(
    visit: Visit, seeded: Seeded, studio_server: SalviaServer
) -> None:
    sm = studio_server.client()
    wait_for(lambda: finished(sm, seeded.training_job))
    wait_for(
        lambda: (
            sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=seeded.tuning_job)[
                "HyperParameterTuningJobStatus"
            ]
            == "Completed"
        )
    )
    for done in (
        lambda: (
            sm.describe_processing_job(ProcessingJobName=seeded.processing_job)[
                "ProcessingJobStatus"
            ]
            == "Failed"
        ),
        lambda: (
            sm.describe_transform_job(TransformJobName=seeded.transform_job)["TransformJobStatus"]
            == "Completed"
        ),
    ):
        wait_for(done)
    visit.open("/studio/home")
    assert "the data did not add up" in visit.page.locator("#failing").inner_text()
    visit.open(f"/studio/processing-jobs/{seeded.processing_job}")
    assert "the data did not add up" in visit.page.locator("#log-tail").inner_text()
    pages = [
        "/studio/home",
        f"/studio/processing-jobs/{seeded.processing_job}",
        f"/studio/transform-jobs/{seeded.transform_job}",
        "/studio/training-jobs?sort=Name&order=Ascending&q=train",
        f"/studio/training-jobs/{seeded.training_job}",
        "/studio/tuning-jobs",
        f"/studio/tuning-jobs/{seeded.tuning_job}",
        "/studio/processing-jobs?status=Failed",
        "/studio/transform-jobs",
        "/studio/endpoints",
        f"/studio/endpoints/{seeded.endpoint}",
        "/studio/models",
        f"/studio/models/{seeded.endpoint}",
        "/studio/endpoint-configs",
        f"/studio/endpoint-configs/{seeded.endpoint}",
        "/studio/model-registry",
        f"/studio/model-registry/{seeded.group}",
        f"/studio/model-registry/{seeded.group}/1",
        "/studio/experiments",
        f"/studio/experiments/{seeded.experiment}",
        f"/studio/trial-components?experiment={seeded.experiment}&size=10",
        f"/studio/trial-components/{seeded.component}",
        "/studio/lineage",
        f"/studio/lineage?arn={sm.describe_endpoint(EndpointName=seeded.endpoint)['EndpointArn']}",
    ]
    for path in pages:
        response = visit.open(path, settle=False)
        assert response.status == 200, (path, response.status)
        assert visit.page.locator("main h1").count() == 1, path
        visit.screenshot(f"page{path.split('?')[0].replace('/studio', '')}")
    # the tuning job's trials, best first, and its objective chart
    visit.open(f"/studio/tuning-jobs/{seeded.tuning_job}")
    assert visit.page.locator("#trials tbody tr").count() == 2
    visit.page.locator("#objective-chart .main-svg").first.wait_for()
    # the experiment's two runs compared: a bar each, and a line each over their steps
    visit.open(f"/studio/experiments/{seeded.experiment}")
    assert visit.page.locator("#compare-chart .bars .point").count() == 2
    assert visit.page.locator("#series-chart .scatterlayer .trace").count() == 2
    assert visit.page.locator("#runs tbody tr").count() == 2
    # lineage: the endpoint's context with the model's artifacts upstream
    visit.open(
        f"/studio/lineage?arn={sm.describe_training_job(TrainingJobName=seeded.training_job)['TrainingJobArn']}"
    )
    assert visit.page.locator("#lineage-graph .node").count() >= 2

    visit.page.set_viewport_size(TABLET)
    for path in pages:
        visit.open(path, settle=False)
        overflow = visit.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
        visit.screenshot(f"tablet{path.split('?')[0].replace('/studio', '')}")
    visit.assert_clean()


def test_lists_page_and_sort_through_the_api(visit: Visit, seeded: Seeded) -> None:
    visit.open("/studio/trial-components?size=10")
    rows = visit.page.locator("#list tbody tr td:first-child")
    first = rows.all_inner_texts()
    assert len(first) == 10
    visit.page.click("#next-page")
    visit.page.wait_for_load_state("load")
    second = rows.all_inner_texts()
    assert second and not set(first) & set(second)

    visit.open("/studio/trial-components?size=10")
    visit.page.click("#list thead >> text=Name")  # newest first -> by name, descending
    visit.page.wait_for_load_state("load")
    visit.page.click("#list thead >> text=Name")  # and again: ascending
    visit.page.wait_for_load_state("load")
    assert "sort=Name" in visit.page.url and "order=Ascending" in visit.page.url
    names = rows.all_inner_texts()
    assert names == sorted(names, key=str.lower)
    visit.assert_clean()


def test_a_version_approved_in_the_page_is_approved_through_boto3(
    visit: Visit, seeded: Seeded, studio_server: SalviaServer
) -> None:
    visit.open(f"/studio/model-registry/{seeded.group}")
    versions = visit.page.locator("#versions").inner_text()
    assert "accuracy" in versions and "0.93" in versions and "ModelQuality.Statistics" in versions
    visit.open(f"/studio/model-registry/{seeded.group}/1")
    visit.page.fill("#approval-comment", "beats the baseline on holdout")
    visit.page.click("#approve-button")
    visit.page.wait_for_load_state("networkidle")
    assert "Approved" in visit.page.locator("#approval-status").inner_text()
    sm = studio_server.client()
    arn = sm.list_model_packages(ModelPackageGroupName=seeded.group)["ModelPackageSummaryList"][0][
        "ModelPackageArn"
    ]
    described = sm.describe_model_package(ModelPackageName=arn)
    assert described["ModelApprovalStatus"] == "Approved"
    assert described["ApprovalDescription"] == "beats the baseline on holdout"
    visit.assert_clean()


def test_a_test_invoke_returns_a_prediction(
    visit: Visit, seeded: Seeded, studio_server: SalviaServer
) -> None:
    studio_server.client().get_waiter("endpoint_in_service").wait(
        EndpointName=seeded.endpoint, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240}
    )
    visit.open(f"/studio/endpoints/{seeded.endpoint}")
    assert "AllTraffic" in visit.page.locator("#variants").inner_text()
    assert f"s3://{BUCKET}/capture" in visit.page.locator("#capture").inner_text()
    visit.page.fill("#invoke-body", "1,2")
    visit.page.click("#invoke-button")
    visit.page.wait_for_function(
        "document.getElementById('invoke-result').textContent.includes('predictions')"
    )
    assert json.loads(visit.page.locator("#invoke-result").inner_text()) == {
        "predictions": [2.5, 5.0]
    }
    # and the live figures (the server's /metrics) count it
    visit.page.wait_for_function("Number(document.getElementById('live-total').textContent) >= 1")
    visit.assert_clean()


def test_the_stop_button_stops_a_running_job(
    visit: Visit, seeded: Seeded, studio_server: SalviaServer
) -> None:
    sm = studio_server.client()
    name = unique("stop")
    request = training_request(name, seeded.source)
    request["HyperParameters"]["epochs"] = "300"  # two minutes, unless stopped
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 300}
    sm.create_training_job(**request)
    wait_for(
        lambda: sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] == "Training"
    )
    visit.open(f"/studio/training-jobs/{name}")
    visit.page.click("#stop")
    visit.page.wait_for_load_state("load")
    assert "Stop requested" in visit.page.locator(".notice").inner_text()
    wait_for(
        lambda: sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped"
    )
    visit.assert_clean()


def test_api_errors_are_shown_in_words(visit: Visit, seeded: Seeded) -> None:
    response = visit.open("/studio/training-jobs/no-such-job")
    assert response.status == 400
    assert "ValidationException" in visit.page.locator(".error").inner_text()
    response = visit.open(f"/studio/trial-components?experiment=no-such-{seeded.experiment}")
    assert response.status == 404
    assert "ResourceNotFound" in visit.page.locator(".error").inner_text()
    assert visit.outside_requests() == []


def test_a_form_posted_from_another_site_is_refused(
    studio_server: SalviaServer, seeded: Seeded
) -> None:
    request = urllib.request.Request(
        f"{studio_server.url}/studio/training-jobs/{seeded.training_job}/stop",
        data=b"",
        method="POST",
        headers={"Origin": "http://elsewhere.example", "Sec-Fetch-Site": "cross-site"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 403
