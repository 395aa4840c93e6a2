"""InvokeEndpointWithResponseStream through boto3: a handler that yields is streamed part by
part as AWS event-stream `PayloadPart` events, parsed by botocore's own EventStream reader."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError, EventStreamError

from tests.api.test_endpoints import deploy
from tests.conftest import SalviaServer

# process-heavy; their store use is covered on both backends elsewhere
pytestmark = pytest.mark.one_backend

GENERATOR = """
import json
import time

def model_fn(model_dir):
    return ["Salvia ", "streams ", "each ", "token."]

def input_fn(body, content_type):
    return json.loads(body)

def predict_fn(request, tokens):
    if request.get("fail_first"):
        raise ValueError("refused before the first token")
    for index, token in enumerate(tokens[: request.get("limit", len(tokens))]):
        if request.get("break_after") == index:
            raise RuntimeError("the generator broke midway")
        time.sleep(request.get("delay", 0))
        yield token

def output_fn(parts, accept):
    return parts, "text/plain"
"""


@pytest.fixture
def runtime(server: SalviaServer) -> Any:
    return server.client("sagemaker-runtime")


def payloads(stream: Any) -> list[tuple[bytes, float]]:
    received = []
    for event in stream:
        received.append((event["PayloadPart"]["Bytes"], time.perf_counter()))
    return received


def test_a_yielding_handler_streams_its_parts(server: SalviaServer, runtime: Any) -> None:
    name = deploy(server, {"code/inference.py": GENERATOR.encode()})
    started = time.perf_counter()
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=name, ContentType="application/json", Body=json.dumps({"delay": 0.3})
    )
    assert response["ContentType"] == "text/plain"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    parts = payloads(response["Body"])
    assert b"".join(p for p, _ in parts) == b"Salvia streams each token."
    assert len(parts) == 4
    # the first token arrived while the rest were still being generated
    assert parts[0][1] - started < parts[-1][1] - started - 0.5

    # InvokeEndpoint on the same handler answers the whole body at once
    whole = runtime.invoke_endpoint(
        EndpointName=name, ContentType="application/json", Body=json.dumps({"limit": 2})
    )
    assert whole["Body"].read() == b"Salvia streams "

    # a failure before the first part is an ordinary ModelError
    with pytest.raises(ClientError) as refused:
        runtime.invoke_endpoint_with_response_stream(
            EndpointName=name, ContentType="application/json", Body=json.dumps({"fail_first": 1})
        )
    assert refused.value.response["Error"]["Code"] == "ModelError"
    assert "refused before the first token" in refused.value.response["OriginalMessage"]

    # a failure midway ends the stream with ModelStreamError after the parts already sent
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=name, ContentType="application/json", Body=json.dumps({"break_after": 2})
    )
    received = []
    with pytest.raises(EventStreamError) as broken:
        for event in response["Body"]:
            received.append(event["PayloadPart"]["Bytes"])
    assert received == [b"Salvia ", b"streams "]
    assert broken.value.response["Error"]["Code"] == "ModelStreamError"
    assert "broke before its response ended" in broken.value.response["Error"]["Message"]
    server.client().delete_endpoint(EndpointName=name)


def test_streaming_needs_a_served_endpoint(server: SalviaServer, runtime: Any) -> None:
    with pytest.raises(ClientError) as refused:
        runtime.invoke_endpoint_with_response_stream(EndpointName="nowhere", Body=b"{}")
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    assert "not found" in refused.value.response["Error"]["Message"]
