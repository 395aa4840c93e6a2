"""Signed requests in authenticated mode, as AWS refuses them: unsigned, unknown keys, wrong
secrets, tampered bodies, expired and replayed requests, on the control plane, the runtime, IAM
and S3 (header and presigned, payload-signed and streaming)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import random
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer, free_port, unique


@pytest.fixture(scope="module")
def server(iam_server: SalviaServer) -> SalviaServer:
    return iam_server


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def capture(client: Any) -> list[AWSRequest]:
    """Every request `client` sends, as signed."""
    sent: list[AWSRequest] = []
    client.meta.events.register("before-send", lambda request, **_: sent.append(request))
    return sent


def send(server: SalviaServer, request: AWSRequest, body: bytes | None = None) -> tuple[int, bytes]:
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    data = request.body if body is None else body
    raw = urllib.request.Request(request.url, data=data, headers=headers, method=request.method)
    try:
        with urllib.request.urlopen(raw, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_an_unsigned_request_is_refused(server: SalviaServer) -> None:
    request = urllib.request.Request(
        server.url,
        data=b"{}",
        headers={
            "X-Amz-Target": "SageMaker.ListModels",
            "Content-Type": "application/x-amz-json-1.1",
        },
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert json.loads(refused.value.read())["__type"] == "MissingAuthenticationTokenException"
    refused.value.close()


def test_an_unknown_key_and_a_wrong_secret_are_refused(server: SalviaServer) -> None:
    key, _ = server.credentials
    with pytest.raises(ClientError) as unknown:
        server.client(credentials=("AKIAUNKNOWNUNKNOWN00", "x" * 40)).list_models()
    assert code(unknown) == "UnrecognizedClientException"
    with pytest.raises(ClientError) as wrong:
        server.client(credentials=(key, "not-the-secret")).list_models()
    assert code(wrong) == "InvalidSignatureException"
    with pytest.raises(ClientError) as iam_wrong:
        server.client("iam", credentials=(key, "not-the-secret")).list_users()
    assert code(iam_wrong) == "SignatureDoesNotMatch"
    assert server.client().list_models()["Models"] == []


def test_a_tampered_body_is_refused(server: SalviaServer) -> None:
    sm = server.client()
    sent = capture(sm)
    name = unique("exp")
    sm.create_experiment(ExperimentName=name)
    forged = json.dumps({"ExperimentName": name + "-forged"}).encode()
    status, body = send(server, sent[-1], forged)
    assert status == 403
    assert json.loads(body)["__type"] == "InvalidSignatureException"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b"{ }"])
def test_a_signed_body_that_is_not_an_object_is_answered_by_the_protocol(
    server: SalviaServer, body: bytes
) -> None:
    """The guard hands the protocol the body it parsed only when it is an object; anything else
    gets the protocol's own answer, as in open mode."""
    request = AWSRequest(
        method="POST",
        url=server.url + "/",
        data=body,
        headers={"X-Amz-Target": "SageMaker.ListExperiments",
                 "Content-Type": "application/x-amz-json-1.1"},
    )  # fmt: skip
    botocore.auth.SigV4Auth(Credentials(*server.credentials), "sagemaker", "us-east-1").add_auth(
        request
    )
    status, answer = send(server, request)
    if body.strip() in (b"", b"{ }"):
        assert status == 200 and "ExperimentSummaries" in json.loads(answer)
    else:
        assert status == 400
        assert json.loads(answer)["__type"] == "SerializationException"


def test_a_replayed_mutating_request_is_refused(server: SalviaServer) -> None:
    sm = server.client()
    sent = capture(sm)
    sm.create_experiment(ExperimentName=unique("exp"))
    status, body = send(server, sent[-1])
    assert status == 403
    assert json.loads(body)["__type"] == "InvalidSignatureException"
    assert "already used" in json.loads(body)["message"]


@pytest.fixture
def ten_minutes_ago(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    then = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: then)
    yield


@pytest.mark.usefixtures("ten_minutes_ago")
def test_a_request_signed_ten_minutes_ago_has_expired(server: SalviaServer) -> None:
    with pytest.raises(ClientError) as expired:
        server.client().list_models()
    assert code(expired) == "InvalidSignatureException"
    assert "Signature expired" in str(expired.value)
    with pytest.raises(ClientError) as s3_expired:
        server.client("s3").list_buckets()
    assert code(s3_expired) == "RequestTimeTooSkewed"


def test_runtime_and_metrics_requests_are_verified(server: SalviaServer) -> None:
    key, _ = server.credentials
    runtime = server.client("sagemaker-runtime", credentials=(key, "wrong"))
    with pytest.raises(ClientError) as refused:
        runtime.invoke_endpoint(EndpointName="nowhere", Body=b"1")
    assert code(refused) == "InvalidSignatureException"
    with pytest.raises(ClientError) as missing:
        server.client("sagemaker-runtime").invoke_endpoint(EndpointName="nowhere", Body=b"1")
    assert code(missing) == "ValidationError"  # signed well: on to the endpoint, which is not there
    logs = server.client("logs", credentials=(key, "wrong"))
    with pytest.raises(ClientError) as logs_refused:
        logs.describe_log_groups()
    assert code(logs_refused) == "InvalidSignatureException"


@pytest.fixture(scope="module")
def bucket(server: SalviaServer) -> str:
    name = unique("auth")
    s3 = server.client("s3")
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="data/a.txt", Body=b"alpha")
    return name


def test_s3_header_auth_and_its_refusals(server: SalviaServer, bucket: str) -> None:
    key, _ = server.credentials
    s3 = server.client("s3")
    assert s3.get_object(Bucket=bucket, Key="data/a.txt")["Body"].read() == b"alpha"
    with pytest.raises(ClientError) as wrong:
        server.client("s3", credentials=(key, "wrong")).get_object(Bucket=bucket, Key="data/a.txt")
    assert code(wrong) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as unknown:
        server.client("s3", credentials=("AKIANOBODY0000000000", "x")).list_buckets()
    assert code(unknown) == "InvalidAccessKeyId"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{server.url}/{bucket}/data/a.txt", timeout=10)
    assert anonymous.value.code == 403
    assert b"<Code>AccessDenied</Code>" in anonymous.value.read()
    anonymous.value.close()


def test_s3_body_must_match_its_signed_hash(server: SalviaServer, bucket: str) -> None:
    s3 = server.client("s3")
    sent = capture(s3)
    s3.put_object(Bucket=bucket, Key="data/b.txt", Body=b"bravo")
    status, body = send(server, sent[-1], b"forgd")
    assert status == 400
    assert b"XAmzContentSHA256Mismatch" in body
    assert s3.get_object(Bucket=bucket, Key="data/b.txt")["Body"].read() == b"bravo"


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_presigned_urls(server: SalviaServer, bucket: str, version: str) -> None:
    s3 = server.client("s3", signature_version=version)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "data/a.txt"})
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"alpha"
    tampered = url.replace("data/a.txt", "data/b.txt")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)
    assert refused.value.code == 403
    assert b"SignatureDoesNotMatch" in refused.value.read()
    refused.value.close()


@pytest.mark.usefixtures("ten_minutes_ago")
def test_an_expired_presigned_url_is_refused(server: SalviaServer, bucket: str) -> None:
    s3 = server.client("s3", signature_version="s3v4")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "data/a.txt"}, ExpiresIn=60
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 403
    assert b"Request has expired" in refused.value.read()
    refused.value.close()


def _chunked(server: SalviaServer, bucket: str, key: str, chunks: list[bytes], forge: bool) -> int:
    """A PUT in `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, each chunk signed after the seed."""
    access, secret = server.credentials
    payload = sum(len(c) for c in chunks)
    request = AWSRequest(
        method="PUT",
        url=f"{server.url}/{bucket}/{key}",
        headers={
            "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(payload),
        },
    )
    signer = botocore.auth.SigV4Auth(Credentials(access, secret), "s3", "us-east-1")
    signer.add_auth(request)
    stamp = request.context["timestamp"]
    scope = f"{stamp[:8]}/us-east-1/s3/aws4_request"
    key_bytes = f"AWS4{secret}".encode()
    for part in (stamp[:8], "us-east-1", "s3", "aws4_request"):
        key_bytes = hmac.new(key_bytes, part.encode(), hashlib.sha256).digest()
    previous = request.headers["Authorization"].rsplit("Signature=", 1)[1]
    body = b""
    for chunk in [*chunks, b""]:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, previous,
                             hashlib.sha256(b"").hexdigest(),
                             hashlib.sha256(chunk).hexdigest()])  # fmt: skip
        previous = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        sent = chunk.replace(b"2", b"3") if forge and chunk else chunk
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + sent + b"\r\n"
    return send(server, request, body)[0]


def test_streaming_payload_chunks_are_verified(server: SalviaServer, bucket: str) -> None:
    chunks = [b"one-" * 2000, b"two-" * 100]
    assert _chunked(server, bucket, "data/streamed.txt", chunks, forge=False) == 200
    got = server.client("s3").get_object(Bucket=bucket, Key="data/streamed.txt")["Body"].read()
    assert got == b"".join(chunks)
    chunks = [b"2" * 100]
    assert _chunked(server, bucket, "data/forged.txt", chunks, forge=True) == 403
    with pytest.raises(ClientError):
        server.client("s3").head_object(Bucket=bucket, Key="data/forged.txt")


def _forged(header: str, rng: random.Random) -> str:
    """`header` with one of the ways an attacker (or a broken client) gets it wrong."""
    signature = header.rsplit("Signature=", 1)[1]
    signed = header.split("SignedHeaders=", 1)[1].split(",", 1)[0]
    choice = rng.randrange(9)
    if choice == 0:
        return header[: rng.randrange(len(header))]  # truncated
    if choice == 1:
        names = signed.split(";")
        rotated = ";".join(names[1:] + names[:1])  # reordered
        return header.replace(signed, rotated)
    if choice == 2:
        i = rng.randrange(len(signature))
        flipped = "0123456789abcdef".replace(signature[i], "")
        return header.replace(signature, signature[:i] + rng.choice(flipped) + signature[i + 1 :])
    if choice == 3:
        return header.replace(signed, signed.replace("content-type;", ""))  # a header unsigned
    if choice == 4:
        return header.replace("us-east-1", "eu-west-1")
    if choice == 5:
        return header.replace("/sagemaker/", "/s3/")
    if choice == 6:
        return header.replace("AWS4-HMAC-SHA256", rng.choice(["AWS4-HMAC-SHA512", "AWS", ""]))
    if choice == 7:
        day = header.split("Credential=", 1)[1].split("/")[1]
        return header.replace(f"/{day}/", "/20200101/")
    return header.replace("Credential=", "Credential=X", 1)


def test_a_thousand_forged_headers_get_nothing_through(server: SalviaServer) -> None:
    sm = server.client()
    sent = capture(sm)
    sm.list_models()
    original = sent[-1]
    headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in original.headers.items()}
    body = original.body if isinstance(original.body, bytes) else str(original.body).encode()
    rng = random.Random(10)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    statuses = []
    try:
        for _ in range(1000):
            forged = dict(headers, Authorization=_forged(headers["Authorization"], rng))
            connection.request("POST", "/", body=body, headers=forged)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.request("POST", "/", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert all(400 <= status < 500 for status in statuses), sorted(set(statuses))
    assert response.status == 200  # the genuine request, still within its time


def test_a_non_loopback_address_without_authentication_refuses_to_start(
    tmp_path: Any,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "salvia.cli.main",
            "--home",
            str(tmp_path),
            "server",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SALVIA_AUTH_MODE": "open"},
    )
    assert result.returncode == 2
    assert "--insecure-open-access" in result.stderr


def test_studio_asks_to_sign_in_first_in_authenticated_mode(server: SalviaServer) -> None:
    with urllib.request.urlopen(f"{server.url}/studio/training-jobs", timeout=10) as page:
        assert urllib.parse.urlsplit(page.url).path == "/studio/sign-in"
        assert b"Sign in to Studio" in page.read()
    stop = urllib.request.Request(
        f"{server.url}/studio/training-jobs/any/stop", data=b"", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stop, timeout=10)
    assert refused.value.code == 401
    refused.value.close()


def test_keys_and_queries_with_characters_to_escape_verify(
    server: SalviaServer, bucket: str
) -> None:
    s3 = server.client("s3")
    key = "odd dir/a b+c&d=é~(1)*.txt"
    s3.put_object(Bucket=bucket, Key=key, Body=b"odd")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"odd"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="odd dir/a b+", MaxKeys=1)
    assert [o["Key"] for o in listed["Contents"]] == [key]
    url = server.client("s3", signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"odd"
