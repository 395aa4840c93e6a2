"""AddTags, ListTags and DeleteTags on any resource ARN."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import unique


def test_tags_on_each_experiments_resource(sm: Any) -> None:
    experiment, trial, component = unique("exp"), unique("trial"), unique("tc")
    arns = [
        sm.create_experiment(ExperimentName=experiment)["ExperimentArn"],
        sm.create_trial(TrialName=trial, ExperimentName=experiment)["TrialArn"],
        sm.create_trial_component(TrialComponentName=component)["TrialComponentArn"],
    ]
    for arn in arns:
        added = sm.add_tags(
            ResourceArn=arn, Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
        )
        assert added["Tags"] == [{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}]
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "changed"}])
        assert sm.list_tags(ResourceArn=arn)["Tags"] == [
            {"Key": "a", "Value": "changed"},
            {"Key": "b", "Value": "2"},
        ]
        sm.delete_tags(ResourceArn=arn, TagKeys=["a"])
        assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]


def test_tag_errors(sm: Any) -> None:
    arn = sm.create_experiment(ExperimentName=unique("exp"))["ExperimentArn"]
    missing = "arn:aws:sagemaker:us-east-1:123456789012:experiment/nothing-here"
    for call in (
        lambda: sm.list_tags(ResourceArn=missing),
        lambda: sm.add_tags(ResourceArn=missing, Tags=[{"Key": "a", "Value": "b"}]),
        lambda: sm.add_tags(ResourceArn=arn, Tags=[{"Key": "aws:reserved", "Value": "b"}]),
        lambda: sm.add_tags(
            ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)]
        ),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert excinfo.value.response["Error"]["Code"] == "ValidationException"
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    with pytest.raises(ClientError):
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "one-more", "Value": "v"}])
    assert len(sm.list_tags(ResourceArn=arn)["Tags"]) == 50
