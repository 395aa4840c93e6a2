"""IAM's policy language, statement by statement: what allows, what denies, and what is left
to the implicit deny."""

from __future__ import annotations

import json
from typing import Any

import pytest

from salvia.iam.policy import (
    ALLOW,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    MalformedPolicy,
    Policy,
    RequestContext,
    evaluate,
)

JOB = "arn:aws:sagemaker:us-east-1:123456789012:training-job/red-1"


def decide(
    statements: list[dict[str, Any]],
    action: str = "sagemaker:DescribeTrainingJob",
    resource: str = JOB,
    **context: Any,
) -> str:
    policy = Policy.parse(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    values = {k.replace("__", "/").replace("_", ":", 1): v if isinstance(v, list) else [v]
              for k, v in context.items()}  # fmt: skip
    return evaluate([policy], action, resource, RequestContext(values))[0]


def allow(**fields: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": "*", "Resource": "*", **fields}


def test_actions_match_with_wildcards_case_insensitively() -> None:
    assert decide([allow(Action="sagemaker:Describe*")]) == ALLOW
    assert decide([allow(Action="SageMaker:describetrainingjob")]) == ALLOW
    assert decide([allow(Action="sagemaker:Create*")]) == IMPLICIT_DENY
    assert decide([allow(Action="sagemaker:Describe?rainingJob")]) == ALLOW
    assert decide([allow(Action=["s3:GetObject", "sagemaker:*"])]) == ALLOW


def test_not_action_and_not_resource() -> None:
    everything_but_delete = {"NotAction": "sagemaker:Delete*", "Resource": "*"}
    assert decide([{"Effect": "Allow", **everything_but_delete}]) == ALLOW
    assert (
        decide([{"Effect": "Allow", **everything_but_delete}], "sagemaker:DeleteModel")
        == IMPLICIT_DENY
    )
    not_red = {"Effect": "Allow", "Action": "*", "NotResource": "*:training-job/red-*"}
    assert decide([not_red]) == IMPLICIT_DENY
    assert decide([not_red], resource=JOB.replace("red", "blue")) == ALLOW


def test_resources_match_arns_with_wildcards_case_sensitively() -> None:
    assert decide([allow(Resource="arn:aws:sagemaker:*:*:training-job/red-*")]) == ALLOW
    assert decide([allow(Resource="arn:aws:sagemaker:*:*:training-job/RED-*")]) == IMPLICIT_DENY


def test_explicit_deny_wins_over_any_allow() -> None:
    deny = {"Effect": "Deny", "Action": "sagemaker:DescribeTrainingJob", "Resource": "*"}
    assert decide([allow(), deny]) == EXPLICIT_DENY
    assert decide([deny, allow()]) == EXPLICIT_DENY
    assert decide([allow(), deny], "sagemaker:ListTrainingJobs") == ALLOW


def test_string_conditions_and_resource_tags() -> None:
    red = allow(Condition={"StringEquals": {"aws:ResourceTag/team": "red"}})
    assert decide([red], aws_ResourceTag__team="red") == ALLOW
    assert decide([red], aws_ResourceTag__team="blue") == IMPLICIT_DENY
    assert decide([red]) == IMPLICIT_DENY  # an absent key matches no positive operator
    like = allow(Condition={"StringLike": {"aws:ResourceTag/team": ["r*", "g?een"]}})
    assert decide([like], aws_ResourceTag__team="green") == ALLOW
    not_blue = allow(Condition={"StringNotEquals": {"aws:ResourceTag/team": "blue"}})
    assert decide([not_blue], aws_ResourceTag__team="red") == ALLOW
    assert decide([not_blue], aws_ResourceTag__team="blue") == IMPLICIT_DENY
    ignore_case = allow(Condition={"StringEqualsIgnoreCase": {"aws:username": "ALICE"}})
    assert decide([ignore_case], aws_username="alice") == ALLOW


def test_if_exists_and_null() -> None:
    maybe = allow(Condition={"StringEqualsIfExists": {"aws:RequestTag/team": "red"}})
    assert decide([maybe]) == ALLOW
    assert decide([maybe], aws_RequestTag__team="blue") == IMPLICIT_DENY
    untagged = allow(Condition={"Null": {"aws:RequestTag/team": "true"}})
    assert decide([untagged]) == ALLOW
    assert decide([untagged], aws_RequestTag__team="red") == IMPLICIT_DENY


def test_set_operators_on_multivalued_keys() -> None:
    only_known = allow(Condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["team", "cost"]}})
    assert decide([only_known], aws_TagKeys=["team"]) == ALLOW
    assert decide([only_known], aws_TagKeys=["team", "owner"]) == IMPLICIT_DENY
    assert decide([only_known]) == ALLOW  # no keys: vacuously all known
    any_team = allow(Condition={"ForAnyValue:StringEquals": {"aws:TagKeys": "team"}})
    assert decide([any_team], aws_TagKeys=["owner", "team"]) == ALLOW
    assert decide([any_team]) == IMPLICIT_DENY


def test_numeric_date_bool_ip_and_arn_operators() -> None:
    few = allow(Condition={"NumericLessThanEquals": {"s3:MaxKeys": "10"}})
    assert decide([few], s3_MaxKeys="5") == ALLOW
    assert decide([few], s3_MaxKeys="50") == IMPLICIT_DENY
    assert decide([few]) == IMPLICIT_DENY  # an absent key
    before = allow(Condition={"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}})
    assert decide([before], aws_CurrentTime="2026-11-24T01:00:00Z") == ALLOW
    assert decide([before], aws_CurrentTime="2031-01-01T00:00:00Z") == IMPLICIT_DENY
    secure = allow(Condition={"Bool": {"aws:SecureTransport": True}})
    assert decide([secure], aws_SecureTransport="false") == IMPLICIT_DENY
    office = allow(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    assert decide([office], aws_SourceIp="10.1.2.3") == ALLOW
    assert decide([office], aws_SourceIp="192.168.0.1") == IMPLICIT_DENY
    outside = allow(Condition={"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "::1/128"]}})
    assert decide([outside], aws_SourceIp="::1") == IMPLICIT_DENY
    role = allow(Condition={"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/ml-*"}})
    assert decide([role], aws_PrincipalArn="arn:aws:iam::123456789012:role/ml-ops") == ALLOW
    assert decide([role], aws_PrincipalArn="arn:aws:iam::123456789012:user/ml-x") == IMPLICIT_DENY


def test_conditions_combine_and_within_or_across_values() -> None:
    both = allow(
        Condition={
            "StringEquals": {"aws:ResourceTag/team": ["red", "green"], "aws:username": "alice"}
        }
    )
    assert decide([both], aws_ResourceTag__team="green", aws_username="alice") == ALLOW
    assert decide([both], aws_ResourceTag__team="green", aws_username="bob") == IMPLICIT_DENY


def test_policy_variables_in_resources() -> None:
    home = allow(Action="s3:*", Resource="arn:aws:s3:::home/${aws:username}/*")
    ctx = RequestContext({"aws:username": ["alice"]})
    policy = Policy.parse(json.dumps({"Statement": [home]}))
    assert evaluate([policy], "s3:GetObject", "arn:aws:s3:::home/alice/x", ctx)[0] == ALLOW
    assert evaluate([policy], "s3:GetObject", "arn:aws:s3:::home/bob/x", ctx)[0] == IMPLICIT_DENY


def test_resolver_is_asked_only_for_keys_a_condition_names() -> None:
    asked: list[str] = []

    def resolver(key: str, resource: str) -> list[str] | None:
        asked.append(key)
        return ["red"] if key == "aws:resourcetag/team" else None

    red = Policy.parse(json.dumps({"Statement": [
        allow(Condition={"StringEquals": {"aws:ResourceTag/team": "red"}})]}))  # fmt: skip
    assert evaluate([red], "sagemaker:X", JOB, RequestContext({}, resolver))[0] == ALLOW
    assert asked == ["aws:resourcetag/team"]


@pytest.mark.parametrize(
    "document",
    [
        "not json",
        "[]",
        {"Statement": []},
        {"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]},
        {"Statement": [{"Effect": "Allow", "Resource": "*"}]},
        {"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "x:y", "Resource": "*"}]},
        {"Statement": [{"Effect": "Allow", "Action": "nocolon", "Resource": "*"}]},
        {"Statement": [allow(Condition={"StringSoundsLike": {"a:b": "c"}})]},
        {"Statement": [allow(Condition={"ForSomeValues:StringEquals": {"a:b": "c"}})]},
    ],
)
def test_malformed_documents_are_refused(document: Any) -> None:
    with pytest.raises(MalformedPolicy):
        Policy.parse(document if isinstance(document, str) else json.dumps(document))
