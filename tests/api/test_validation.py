"""The request validator against botocore's real SageMaker model: edge cases the wire tests
do not reach."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest

from salvia.api.serialize import shape_output
from salvia.api.validation import RequestValidator, java_pattern
from salvia.errors import ValidationException

MODEL = botocore.session.get_session().get_service_model("sagemaker")


def validate(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    return RequestValidator().validate(MODEL.operation_model(operation).input_shape, params)


def message(operation: str, params: dict[str, Any]) -> str:
    with pytest.raises(ValidationException) as excinfo:
        validate(operation, params)
    return excinfo.value.message


def test_every_pattern_in_the_model_compiles() -> None:
    patterns = {
        MODEL.shape_for(name).metadata["pattern"]
        for name in MODEL.shape_names
        if "pattern" in MODEL.shape_for(name).metadata
    }
    assert len(patterns) > 100
    for pattern in patterns:
        java_pattern(pattern)


def test_unicode_classes_in_tag_patterns() -> None:
    tags = [{"Key": "équipe", "Value": "données 数据 +-=._:/@"}]
    assert (
        validate(
            "AddTags", {"ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:x/y", "Tags": tags}
        )["Tags"]
        == tags
    )
    assert "tags.1.member.key" in message(
        "AddTags",
        {
            "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:x/y",
            "Tags": [{"Key": "bad\u0000key", "Value": "v"}],
        },
    )


def test_timestamps_accept_epoch_and_iso_and_normalize_to_aware_datetimes() -> None:
    epoch = validate("ListExperiments", {"CreatedAfter": 1_700_000_000.5})["CreatedAfter"]
    iso = validate("ListExperiments", {"CreatedAfter": "2023-11-14T22:13:20.5Z"})["CreatedAfter"]
    assert epoch == iso == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    for bad in ("tomorrow", float("inf"), True, [1]):
        assert "at 'createdAfter'" in message("ListExperiments", {"CreatedAfter": bad})


def test_integral_floats_are_integers_but_fractions_are_not() -> None:
    assert validate("ListExperiments", {"MaxResults": 5.0})["MaxResults"] == 5
    assert "integer" in message("ListExperiments", {"MaxResults": 5.5})


def test_nulls_are_absent_and_unknown_members_dropped() -> None:
    assert validate("ListExperiments", {"SortBy": None, "Colour": "red"}) == {}
    assert "Member must not be null" in message("DescribeExperiment", {"ExperimentName": None})


def test_map_members_are_validated_by_key_and_value() -> None:
    too_long_key = "k" * 321
    text = message(
        "CreateTrialComponent",
        {"TrialComponentName": "tc", "Parameters": {too_long_key: {"NumberValue": 1}}},
    )
    assert "parameters.key" in text
    text = message(
        "CreateTrialComponent",
        {"TrialComponentName": "tc", "Parameters": {"lr": {"NumberValue": "high"}}},
    )
    assert "parameters.lr.numberValue" in text


def test_long_values_are_shortened_in_messages() -> None:
    text = message("DescribeExperiment", {"ExperimentName": "x" * 5000})
    assert len(text) < 600 and "..." in text


def test_output_shaping_drops_undeclared_members_and_formats_timestamps() -> None:
    shape = MODEL.operation_model("DescribeExperiment").output_shape
    when = datetime(2026, 1, 1, tzinfo=UTC)
    shaped = shape_output(
        shape,
        {"ExperimentName": "e", "CreationTime": when, "Secret": "internal", "Description": None},
    )
    assert shaped == {"ExperimentName": "e", "CreationTime": when.timestamp()}
