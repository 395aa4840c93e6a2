"""Search over experiments, trials and trial components, with the queries the SageMaker SDK
sends (sagemaker.experiments.Run, list_runs, ExperimentAnalytics)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer


@pytest.fixture(scope="module")
def world(server: SalviaServer) -> dict[str, Any]:
    """Two experiments; three runs (trial components) with parameters, metrics and tags."""
    sm, metrics = server.client(), server.client("sagemaker-metrics")
    suffix = f"{time.time_ns() % 10**9}"
    names = {"a": f"search-a-{suffix}", "b": f"search-b-{suffix}"}
    for name in names.values():
        sm.create_experiment(ExperimentName=name)
        sm.create_trial(TrialName=f"{name}-trial", ExperimentName=name)
    runs = []
    for i, (experiment, lr) in enumerate([("a", 0.1), ("a", 0.01), ("b", 0.5)]):
        run = f"run-{i}-{suffix}"
        sm.create_trial_component(
            TrialComponentName=run,
            Parameters={"lr": {"NumberValue": lr}, "opt": {"StringValue": ["adam", "sgd"][i % 2]}},
            Tags=[{"Key": "sagemaker:trial-component-source", "Value": "run"}],
        )
        sm.associate_trial_component(TrialComponentName=run, TrialName=f"{names[experiment]}-trial")
        metrics.batch_put_metrics(
            TrialComponentName=run,
            MetricData=[
                {"MetricName": "loss", "Timestamp": time.time(), "Value": v, "Step": s}
                for s, v in enumerate([1.0, lr])
            ],
        )
        runs.append(run)
    return {"sm": sm, "experiments": names, "runs": runs}


def components(response: dict[str, Any]) -> list[str]:
    return [r["TrialComponent"]["TrialComponentName"] for r in response["Results"]]


def test_association_check_the_sdk_sends(world: dict[str, Any]) -> None:
    sm, run = world["sm"], world["runs"][0]
    trial = f"{world['experiments']['a']}-trial"
    expression = {
        "Filters": [
            {"Name": "TrialComponentName", "Operator": "Equals", "Value": run},
            {"Name": "Parents.TrialName", "Operator": "Equals", "Value": trial},
        ]
    }
    found = sm.search(Resource="ExperimentTrialComponent", SearchExpression=expression)
    assert components(found) == [run]
    assert found["TotalHits"] == {"Value": 1, "Relation": "EqualTo"}
    record = found["Results"][0]["TrialComponent"]
    assert record["Parents"] == [{"TrialName": trial, "ExperimentName": world["experiments"]["a"]}]
    assert {"Key": "sagemaker:trial-component-source", "Value": "run"} in record["Tags"]
    assert record["Metrics"][0]["MetricName"] == "loss" and record["Metrics"][0]["Count"] == 2
    expression["Filters"][1]["Value"] = "some-other-trial"
    assert (
        sm.search(Resource="ExperimentTrialComponent", SearchExpression=expression)["Results"] == []
    )


def test_analytics_query_with_sort_and_pages(world: dict[str, Any]) -> None:
    sm = world["sm"]
    expression = {
        "Filters": [
            {
                "Name": "Parents.ExperimentName",
                "Operator": "Equals",
                "Value": world["experiments"]["a"],
            }
        ]
    }
    seen, token = [], None
    while True:
        kwargs: dict[str, Any] = {
            "Resource": "ExperimentTrialComponent",
            "MaxResults": 1,
            "SearchExpression": expression,
            "SortBy": "Parameters.lr",
            "SortOrder": "Ascending",
        }
        if token:
            kwargs["NextToken"] = token
        page = sm.search(**kwargs)
        seen += components(page)
        token = page.get("NextToken")
        if not token:
            break
    assert seen == [world["runs"][1], world["runs"][0]]  # lr 0.01 before 0.1


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"Name": "Parameters.lr", "Operator": "GreaterThan", "Value": "0.05"}], [0, 2]),
        ([{"Name": "Parameters.opt", "Operator": "Equals", "Value": "sgd"}], [1]),
        ([{"Name": "Metrics.loss.Min", "Operator": "LessThanOrEqualTo", "Value": "0.1"}], [0, 1]),
        ([{"Name": "Parameters.opt", "Operator": "In", "Value": "adam,none"}], [0, 2]),
        ([{"Name": "Parameters.missing", "Operator": "NotExists"}], [0, 1, 2]),
        ([{"Name": "TrialComponentName", "Operator": "Contains", "Value": "RUN-1"}], [1]),
        (
            [
                {
                    "Name": "Tags.sagemaker:trial-component-source",
                    "Operator": "Equals",
                    "Value": "run",
                }
            ],
            [0, 1, 2],
        ),
    ],
)
def test_operators(
    world: dict[str, Any], filters: list[dict[str, str]], expected: list[int]
) -> None:
    runs = world["runs"]
    scope = {"Name": "TrialComponentName", "Operator": "In", "Value": ",".join(runs)}
    found = world["sm"].search(
        Resource="ExperimentTrialComponent",
        SearchExpression={"Filters": [scope, *filters]},
        SortBy="CreationTime",
        SortOrder="Ascending",
    )
    assert components(found) == [runs[i] for i in expected]


def test_or_expressions_and_nested_filters(world: dict[str, Any]) -> None:
    runs, names = world["runs"], world["experiments"]
    found = world["sm"].search(
        Resource="ExperimentTrialComponent",
        SearchExpression={
            "Operator": "Or",
            "SubExpressions": [
                {
                    "Filters": [
                        {"Name": "TrialComponentName", "Operator": "Equals", "Value": runs[0]}
                    ]
                },
                {
                    "NestedFilters": [
                        {
                            "NestedPropertyName": "Parents",
                            "Filters": [
                                {
                                    "Name": "Parents.ExperimentName",
                                    "Operator": "Equals",
                                    "Value": names["b"],
                                },
                            ],
                        }
                    ]
                },
            ],
        },
        SortBy="CreationTime",
        SortOrder="Ascending",
    )
    assert components(found) == [runs[0], runs[2]]


def test_experiments_and_trials_are_searchable(world: dict[str, Any]) -> None:
    sm, names = world["sm"], world["experiments"]
    found = sm.search(
        Resource="Experiment",
        SearchExpression={
            "Filters": [{"Name": "ExperimentName", "Operator": "Equals", "Value": names["a"]}]
        },
    )
    assert [r["Experiment"]["ExperimentName"] for r in found["Results"]] == [names["a"]]
    trials = sm.search(
        Resource="ExperimentTrial",
        SearchExpression={
            "Filters": [{"Name": "ExperimentName", "Operator": "Equals", "Value": names["a"]}]
        },
    )["Results"]
    summaries = trials[0]["Trial"]["TrialComponentSummaries"]
    assert {s["TrialComponentName"] for s in summaries} == set(world["runs"][:2])


def test_search_errors(world: dict[str, Any]) -> None:
    sm = world["sm"]
    with pytest.raises(ClientError) as excinfo:
        sm.search(Resource="Pipeline")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert "Pipeline" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as excinfo:
        sm.search(Resource="ExperimentTrialComponent", NextToken="bogus")
    assert excinfo.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as excinfo:
        sm.search(
            Resource="ExperimentTrialComponent",
            SearchExpression={"Filters": [{"Name": "TrialComponentName", "Operator": "Equals"}]},
        )
    assert "needs a Value" in excinfo.value.response["Error"]["Message"]
