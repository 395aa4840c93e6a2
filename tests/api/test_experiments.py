"""Every Experiments operation, as a SageMaker user drives it with boto3."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import unique


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    response = excinfo.value.response
    return (
        response["Error"]["Code"],
        response["Error"]["Message"],
        response["ResponseMetadata"]["HTTPStatusCode"],
    )


def test_experiment_lifecycle(sm: Any) -> None:
    name = unique("exp")
    arn = sm.create_experiment(
        ExperimentName=name,
        DisplayName="My-experiment",
        Description="first",
        Tags=[{"Key": "team", "Value": "ml"}],
    )["ExperimentArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:experiment/{name}"

    described = sm.describe_experiment(ExperimentName=name)
    assert described["ExperimentName"] == name
    assert described["ExperimentArn"] == arn
    assert described["DisplayName"] == "My-experiment"
    assert described["Description"] == "first"
    assert isinstance(described["CreationTime"], datetime)
    assert described["CreationTime"] == described["LastModifiedTime"]
    assert abs(described["CreationTime"].timestamp() - time.time()) < 60

    assert sm.update_experiment(ExperimentName=name, Description="second")["ExperimentArn"] == arn
    updated = sm.describe_experiment(ExperimentName=name)
    assert updated["Description"] == "second"
    assert updated["DisplayName"] == "My-experiment"
    assert updated["LastModifiedTime"] > updated["CreationTime"]

    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "ml"}]
    assert sm.delete_experiment(ExperimentName=name)["ExperimentArn"] == arn
    with pytest.raises(ClientError) as excinfo:
        sm.describe_experiment(ExperimentName=name)
    assert error_of(excinfo)[0] == "ResourceNotFound"


def test_duplicate_experiment_is_a_validation_error_the_sdk_recognizes(sm: Any) -> None:
    name = unique("dup")
    sm.create_experiment(ExperimentName=name)
    with pytest.raises(ClientError) as excinfo:
        sm.create_experiment(ExperimentName=name.upper())  # names are case-insensitive
    code, message, status = error_of(excinfo)
    assert (code, status) == ("ValidationException", 400)
    assert "already exists" in message  # sagemaker.experiments' load-or-create branches on this


def test_missing_resources_answer_resource_not_found(sm: Any) -> None:
    for call in (
        lambda: sm.describe_experiment(ExperimentName="no-such-experiment"),
        lambda: sm.delete_experiment(ExperimentName="no-such-experiment"),
        lambda: sm.update_experiment(ExperimentName="no-such-experiment", Description="x"),
        lambda: sm.describe_trial(TrialName="no-such-trial"),
        lambda: sm.create_trial(TrialName=unique("t"), ExperimentName="no-such-experiment"),
        lambda: sm.describe_trial_component(TrialComponentName="no-such-component"),
        lambda: sm.list_trials(ExperimentName="no-such-experiment"),
    ):
        with pytest.raises(sm.exceptions.ResourceNotFound) as excinfo:
            call()
        _, message, status = error_of(excinfo)
        assert status == 400 and "does not exist" in message


def test_trials_belong_to_experiments(sm: Any) -> None:
    experiment = unique("exp")
    sm.create_experiment(ExperimentName=experiment)
    trials = [unique("trial") for _ in range(3)]
    for trial in trials:
        sm.create_trial(
            TrialName=trial, ExperimentName=experiment, MetadataProperties={"CommitId": "abc123"}
        )
    described = sm.describe_trial(TrialName=trials[0])
    assert described["ExperimentName"] == experiment
    assert described["MetadataProperties"] == {"CommitId": "abc123"}
    assert described["TrialArn"].endswith(f":experiment-trial/{trials[0]}")

    listed = sm.list_trials(ExperimentName=experiment, SortBy="Name", SortOrder="Ascending")
    assert [t["TrialName"] for t in listed["TrialSummaries"]] == sorted(trials)

    sm.update_trial(TrialName=trials[0], DisplayName="renamed")
    assert sm.describe_trial(TrialName=trials[0])["DisplayName"] == "renamed"

    with pytest.raises(ClientError) as excinfo:
        sm.delete_experiment(ExperimentName=experiment)
    assert error_of(excinfo)[0] == "ValidationException"
    for trial in trials:
        sm.delete_trial(TrialName=trial)
    sm.delete_experiment(ExperimentName=experiment)


def test_trial_components_parameters_artifacts_and_associations(sm: Any) -> None:
    experiment, trial, component = unique("exp"), unique("trial"), unique("tc")
    sm.create_experiment(ExperimentName=experiment)
    sm.create_trial(TrialName=trial, ExperimentName=experiment)
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    arn = sm.create_trial_component(
        TrialComponentName=component,
        DisplayName="training",
        Status={"PrimaryStatus": "InProgress", "Message": "running"},
        StartTime=start,
        Parameters={"lr": {"NumberValue": 0.1}, "optimizer": {"StringValue": "adam"}},
        InputArtifacts={"train": {"MediaType": "text/csv", "Value": "s3://bucket/train.csv"}},
    )["TrialComponentArn"]
    described = sm.describe_trial_component(TrialComponentName=component)
    assert described["Parameters"] == {
        "lr": {"NumberValue": 0.1},
        "optimizer": {"StringValue": "adam"},
    }
    assert described["StartTime"] == start
    assert described["Status"] == {"PrimaryStatus": "InProgress", "Message": "running"}
    assert sm.describe_trial_component(TrialComponentName=arn)["TrialComponentName"] == component

    sm.update_trial_component(
        TrialComponentName=component,
        Status={"PrimaryStatus": "Completed"},
        EndTime=start + timedelta(hours=1),
        Parameters={"epochs": {"NumberValue": 10}},
        ParametersToRemove=["optimizer"],
        OutputArtifacts={"model": {"Value": "s3://bucket/model.tar.gz"}},
    )
    updated = sm.describe_trial_component(TrialComponentName=component)
    assert set(updated["Parameters"]) == {"lr", "epochs"}
    assert updated["OutputArtifacts"] == {"model": {"Value": "s3://bucket/model.tar.gz"}}
    assert updated["Status"]["PrimaryStatus"] == "Completed"
    assert updated["EndTime"] == start + timedelta(hours=1)

    associated = sm.associate_trial_component(TrialComponentName=component, TrialName=trial)
    assert associated["TrialComponentArn"] == arn
    by_trial = sm.list_trial_components(TrialName=trial)["TrialComponentSummaries"]
    assert [c["TrialComponentName"] for c in by_trial] == [component]
    by_experiment = sm.list_trial_components(ExperimentName=experiment)["TrialComponentSummaries"]
    assert [c["TrialComponentName"] for c in by_experiment] == [component]
    by_component = sm.list_trials(TrialComponentName=component)["TrialSummaries"]
    assert [t["TrialName"] for t in by_component] == [trial]

    with pytest.raises(ClientError) as excinfo:
        sm.list_trial_components(TrialName=trial, ExperimentName=experiment)
    assert error_of(excinfo)[0] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        sm.delete_trial_component(TrialComponentName=component)
    assert "disassociate" in error_of(excinfo)[1]
    with pytest.raises(ClientError) as excinfo:
        sm.delete_trial(TrialName=trial)
    assert error_of(excinfo)[0] == "ValidationException"

    sm.disassociate_trial_component(TrialComponentName=component, TrialName=trial)
    assert sm.list_trial_components(TrialName=trial)["TrialComponentSummaries"] == []
    with pytest.raises(sm.exceptions.ResourceNotFound):
        sm.disassociate_trial_component(TrialComponentName=component, TrialName=trial)
    sm.delete_trial_component(TrialComponentName=component)
    sm.delete_trial(TrialName=trial)
    sm.delete_experiment(ExperimentName=experiment)


def test_update_cannot_set_and_remove_the_same_parameter(sm: Any) -> None:
    component = unique("tc")
    sm.create_trial_component(TrialComponentName=component)
    with pytest.raises(ClientError) as excinfo:
        sm.update_trial_component(
            TrialComponentName=component,
            Parameters={"lr": {"NumberValue": 1}},
            ParametersToRemove=["lr"],
        )
    assert error_of(excinfo)[0] == "ValidationException"
    assert "lr" in error_of(excinfo)[1]


def test_list_filters_sorting_and_created_window(own_server: Any) -> None:
    sm = own_server.client()
    names = [f"exp-{i:02d}" for i in range(5)]
    for name in names:
        sm.create_experiment(ExperimentName=name)
    everything = sm.list_experiments()["ExperimentSummaries"]
    assert [e["ExperimentName"] for e in everything] == names[::-1]  # newest first by default
    ascending = sm.list_experiments(SortBy="Name", SortOrder="Ascending")["ExperimentSummaries"]
    assert [e["ExperimentName"] for e in ascending] == names
    middle = sm.describe_experiment(ExperimentName=names[2])["CreationTime"]
    after = sm.list_experiments(CreatedAfter=middle)["ExperimentSummaries"]
    assert {e["ExperimentName"] for e in after} == set(names[3:])
    before = sm.list_experiments(CreatedBefore=middle)["ExperimentSummaries"]
    assert {e["ExperimentName"] for e in before} == set(names[:2])


def test_metrics_logged_to_a_trial_component_are_read_back(server: Any) -> None:
    sm, metrics = server.client(), server.client("sagemaker-metrics")
    component = unique("tc")
    arn = sm.create_trial_component(TrialComponentName=component)["TrialComponentArn"]
    now = time.time()
    for batch in range(3):
        response = metrics.batch_put_metrics(
            TrialComponentName=component,
            MetricData=[
                {
                    "MetricName": "train:loss",
                    "Timestamp": now + step,
                    "Step": step,
                    "Value": 1.0 / (step + 1),
                }
                for step in range(batch * 10, batch * 10 + 10)
            ],
        )
        assert response.get("Errors", []) == []

    summary = sm.describe_trial_component(TrialComponentName=component)["Metrics"]
    assert len(summary) == 1
    loss = summary[0]
    assert loss["MetricName"] == "train:loss" and loss["Count"] == 30
    assert loss["Max"] == 1.0 and loss["Last"] == pytest.approx(1 / 30)
    assert loss["Min"] == pytest.approx(1 / 30)

    results = metrics.batch_get_metrics(
        MetricQueries=[
            {
                "MetricName": "train:loss",
                "ResourceArn": arn,
                "MetricStat": "Avg",
                "Period": "IterationNumber",
                "XAxisType": "IterationNumber",
            },
            {
                "MetricName": "train:loss",
                "ResourceArn": arn,
                "MetricStat": "Count",
                "Period": "OneHour",
                "XAxisType": "Timestamp",
            },
            {
                "MetricName": "train:loss",
                "MetricStat": "Max",
                "Period": "OneMinute",
                "XAxisType": "Timestamp",
                "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                "experiment-trial-component/none",
            },
        ]
    )["MetricQueryResults"]
    by_step, by_hour, missing = results
    assert by_step["Status"] == "Complete"
    assert by_step["XAxisValues"] == list(range(30))
    assert by_step["MetricValues"][4] == pytest.approx(0.2)
    assert sum(by_hour["MetricValues"]) == 30
    assert missing["Status"] == "ValidationError"


def test_points_logged_without_a_step_read_back_as_a_time_series(server: Any) -> None:
    """A job's log-scraped metrics carry no Step: by iteration on a time axis they are the raw
    series (what Studio charts); on an iteration axis they are refused."""
    sm, metrics = server.client(), server.client("sagemaker-metrics")
    component = unique("nostep")
    arn = sm.create_trial_component(TrialComponentName=component)["TrialComponentArn"]
    start = time.time() - 10
    metrics.batch_put_metrics(
        TrialComponentName=component,
        MetricData=[
            {"MetricName": "loss", "Timestamp": start + i, "Value": 1.0 / (i + 1)} for i in range(3)
        ],
    )
    query = {"MetricName": "loss", "ResourceArn": arn, "MetricStat": "Avg"}
    by_time, by_step = metrics.batch_get_metrics(
        MetricQueries=[
            {**query, "Period": "IterationNumber", "XAxisType": "Timestamp"},
            {**query, "Period": "IterationNumber", "XAxisType": "IterationNumber"},
        ]
    )["MetricQueryResults"]
    assert by_time["Status"] == "Complete"
    assert by_time["XAxisValues"] == [int(start + i) for i in range(3)]
    assert by_time["MetricValues"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert by_step["Status"] == "ValidationError"


def test_batch_put_metrics_to_a_missing_component_is_rejected(server: Any) -> None:
    metrics = server.client("sagemaker-metrics")
    with pytest.raises(ClientError) as excinfo:
        metrics.batch_put_metrics(
            TrialComponentName="does-not-exist",
            MetricData=[{"MetricName": "m", "Timestamp": time.time(), "Value": 1.0}],
        )
    assert excinfo.value.response["Error"]["Code"] == "ValidationException"
