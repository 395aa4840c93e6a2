"""The control-plane protocol: validation from the service model, error shapes, unknown and
unimplemented operations, signatures."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer, unique

SIGNED = (
    "AWS4-HMAC-SHA256 Credential=testing/20261123/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "a" * 64
)


def post(
    server: SalviaServer, target: str | None, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{server.url}/", data=body, method="POST")
    request.add_header("Content-Type", "application/x-amz-json-1.1")
    if target is not None:
        request.add_header("X-Amz-Target", target)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def validation_message(sm: Any, call: Any) -> str:
    with pytest.raises(ClientError) as excinfo:
        call(sm)
    error = excinfo.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(error["Error"]["Message"])


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        # required member
        (lambda s: s.describe_experiment(ExperimentName=""), "at 'experimentName'"),
        # pattern
        (lambda s: s.create_experiment(ExperimentName="not valid!"), "regular expression"),
        # length
        (lambda s: s.create_experiment(ExperimentName="x" * 121), "length less than or equal"),
        # enum
        (lambda s: s.list_experiments(SortBy="Size"), "enum value set: [Name, CreationTime]"),
        # range
        (lambda s: s.list_experiments(MaxResults=101), "value less than or equal to 100"),
        # nested member of a list
        (
            lambda s: s.create_experiment(
                ExperimentName=unique("e"), Tags=[{"Key": "k" * 129, "Value": "v"}]
            ),
            "at 'tags.1.member.key'",
        ),
        # nested enum
        (
            lambda s: s.create_trial_component(
                TrialComponentName=unique("tc"), Status={"PrimaryStatus": "Sleeping"}
            ),
            "at 'status.primaryStatus'",
        ),
    ],
)
def test_each_kind_of_validation_error_names_the_field(sm: Any, call: Any, expected: str) -> None:
    assert expected in validation_message(sm, call)


def test_wrong_types_are_validation_errors_naming_the_field(server: SalviaServer) -> None:
    cases = [
        ({"ExperimentName": 5}, "experimentName", "string"),
        ({"MaxResults": "ten"}, "maxResults", "integer"),
        ({"CreatedAfter": "yesterday"}, "createdAfter", "timestamp"),
        ({"MaxResults": True}, "maxResults", "integer"),
    ]
    for body, field, kind in cases:
        target = (
            "SageMaker.CreateExperiment"
            if "ExperimentName" in body
            else "SageMaker.ListExperiments"
        )
        status, error = post(server, target, json.dumps(body).encode(), {"Authorization": SIGNED})
        assert status == 400, body
        assert error["__type"] == "ValidationException"
        assert f"at '{field}'" in error["message"] and kind in error["message"]


def test_required_members_are_reported_together(server: SalviaServer) -> None:
    status, error = post(server, "SageMaker.AssociateTrialComponent", b"{}")
    assert status == 400
    assert error["message"].startswith("2 validation errors detected")
    assert "'trialComponentName'" in error["message"] and "'trialName'" in error["message"]


def test_unknown_members_are_ignored_like_aws(server: SalviaServer) -> None:
    name = unique("exp")
    body = json.dumps({"ExperimentName": name, "Flavour": "vanilla"}).encode()
    status, answer = post(server, "SageMaker.CreateExperiment", body)
    assert status == 200 and answer["ExperimentArn"].endswith(name)


def test_unknown_operation(server: SalviaServer) -> None:
    status, error = post(server, "SageMaker.MakeCoffee", b"{}")
    assert (status, error["__type"]) == (400, "UnknownOperationException")
    assert "MakeCoffee" in error["message"]
    status, error = post(server, "Frobnicator_2020.List", b"{}")
    assert (status, error["__type"]) == (400, "UnknownOperationException")


def test_unimplemented_operation_answers_501_naming_it(sm: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        sm.list_clusters()  # HyperPod: outside what a self-hosted Salvia plans to build
    response = excinfo.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert response["Error"]["Code"] == "NotImplementedException"
    assert "ListClusters" in response["Error"]["Message"]


def test_bad_json_is_a_serialization_error(server: SalviaServer) -> None:
    for body in (b"{not json", b"[1, 2]", b'"text"'):
        status, error = post(server, "SageMaker.ListExperiments", body)
        assert status == 400
        assert error["__type"] == "SerializationException"


def test_malformed_authorization_is_rejected_clearly(server: SalviaServer) -> None:
    for header, expected in [
        ("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=" + "a" * 64, "'Credential'"),
        ("AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=" + "a" * 64, "scoped"),
        ("Basic dXNlcjpwYXNz", "Unsupported signing algorithm"),
        (SIGNED.replace("a" * 64, "xyz"), "Signature"),
    ]:
        status, error = post(server, "SageMaker.ListExperiments", b"{}", {"Authorization": header})
        assert status == 400
        assert error["__type"] == "IncompleteSignatureException"
        assert expected in error["message"]


def test_responses_carry_request_ids_and_epoch_timestamps(server: SalviaServer) -> None:
    name = unique("exp")
    post(server, "SageMaker.CreateExperiment", json.dumps({"ExperimentName": name}).encode())
    status, answer = post(
        server, "SageMaker.DescribeExperiment", json.dumps({"ExperimentName": name}).encode()
    )
    assert status == 200
    assert isinstance(answer["CreationTime"], float)
    sm = server.client()
    metadata = sm.list_experiments(MaxResults=1)["ResponseMetadata"]
    assert len(metadata["RequestId"]) == 36


def test_healthz(server: SalviaServer) -> None:
    with urllib.request.urlopen(f"{server.url}/healthz") as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}
