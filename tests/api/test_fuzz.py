"""Hundreds of generated malformed requests: every one answered 4xx with SageMaker's error shape.

The generator is seeded, so a failure names a request that can be replayed.
"""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Iterator
from typing import Any

import botocore.session
from botocore.model import Shape

from tests.conftest import SalviaServer

IMPLEMENTED = [
    "CreateExperiment",
    "DescribeExperiment",
    "ListExperiments",
    "UpdateExperiment",
    "DeleteExperiment",
    "CreateTrial",
    "DescribeTrial",
    "ListTrials",
    "UpdateTrial",
    "DeleteTrial",
    "CreateTrialComponent",
    "DescribeTrialComponent",
    "ListTrialComponents",
    "UpdateTrialComponent",
    "DeleteTrialComponent",
    "AssociateTrialComponent",
    "DisassociateTrialComponent",
    "AddTags",
    "ListTags",
    "DeleteTags",
]
SIGNED = (
    "AWS4-HMAC-SHA256 Credential=fuzz/20261123/us-east-1/sagemaker/aws4_request, "
    "SignedHeaders=host;x-amz-date;x-amz-target, Signature=" + "0" * 64
)
WRONG: dict[str, list[Any]] = {
    "string": [123, 4.5, True, [], {"a": 1}],
    "integer": ["ten", 1.5, [], {}, True, 2**40],
    "long": ["ten", 1.5, [], {}, False],
    "double": ["1.0x", [], {}, True],
    "float": ["x", [], {}],
    "boolean": ["true", 0, [], {}],
    "timestamp": ["not a date", [], {}, True, 1e300],
    "structure": ["text", 7, [1, 2], True],
    "list": ["text", 7, {"a": 1}, True],
    "map": ["text", 7, [1], True],
    "blob": [7, [], "***not base64***"],
}


def wrong_value(shape: Shape, rng: random.Random) -> Any:
    """A value that cannot satisfy `shape`: wrong type, or a string past its length or enum."""
    if shape.type_name == "string" and rng.random() < 0.5:
        enum = shape.metadata.get("enum")
        if enum:
            return "Not" + enum[0] + "AtAll"
        high = shape.metadata.get("max")
        if high:
            return "a" * (high + 1 + rng.randrange(100_000))
    return rng.choice(WRONG[shape.type_name])


def malformed_requests(seed: int = 2) -> Iterator[tuple[str, dict[str, str], bytes]]:
    model = botocore.session.get_session().get_service_model("sagemaker")
    rng = random.Random(seed)
    json_headers = {"Content-Type": "application/x-amz-json-1.1", "Authorization": SIGNED}
    for i in range(600):
        operation = model.operation_model(rng.choice(IMPLEMENTED))
        target = f"SageMaker.{operation.name}"
        headers = {**json_headers, "X-Amz-Target": target}
        kind = i % 8
        members = operation.input_shape.members
        if kind == 0:  # not JSON at all
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            yield target, headers, b"{" + body
        elif kind == 1:  # JSON, but not an object
            yield target, headers, json.dumps(rng.choice([[1, 2], "text", 42, None, 1.5])).encode()
        elif kind == 2:  # a member of the wrong type or past its limits
            name = rng.choice(list(members))
            yield target, headers, json.dumps({name: wrong_value(members[name], rng)}).encode()
        elif kind == 3:  # every member wrong at once
            body = {name: wrong_value(shape, rng) for name, shape in members.items()}
            yield target, headers, json.dumps(body).encode()
        elif kind == 4:  # huge strings everywhere
            body = {name: "x" * rng.randrange(300, 200_000) for name in members}
            yield target, headers, json.dumps(body).encode()
        elif kind == 5:  # the X-Amz-Target header missing, garbled, or of another service
            broken = rng.choice(
                [
                    None,
                    "SageMaker.",
                    "SageMaker",
                    "sagemaker.ListExperiments",
                    f"SageMaker.{operation.name}Please",
                    "Logs_20140328.Nope",
                    "\u00e9\u00e8",
                ]
            )
            bad_headers = dict(json_headers)
            if broken is not None:
                bad_headers["X-Amz-Target"] = broken
            yield str(broken), bad_headers, b"{}"
        elif kind == 6:  # malformed signatures
            broken_auth = rng.choice(
                [
                    "AWS4-HMAC-SHA256",
                    "AWS4-HMAC-SHA256 Credential=x",
                    "Bearer token",
                    SIGNED.replace("aws4_request", "nope"),
                    SIGNED.replace("0" * 64, "0" * 63),
                    SIGNED.replace("20261123", "2026-11-23"),
                    "",
                ]
            )
            yield target, {**headers, "Authorization": broken_auth}, b"{}"
        else:  # deeply nested or numerically absurd JSON
            depth = rng.randrange(50, 3000)
            nested = "[" * depth + "]" * depth
            name = rng.choice(list(members))
            yield target, headers, f'{{"{name}": {nested}, "X": 1e999}}'.encode()


def test_malformed_requests_get_4xx_with_sagemaker_error_shape(server: SalviaServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    count = 0
    try:
        for label, headers, body in malformed_requests():
            connection.request("POST", "/", body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            where = f"request {count} ({label}): {response.status} {payload[:300]!r}"
            assert 400 <= response.status < 500, where
            error = json.loads(payload)
            assert isinstance(error.get("__type"), str) and error["__type"], where
            assert isinstance(error.get("message"), str) and error["message"], where
            count += 1
    finally:
        connection.close()
    assert count >= 500
