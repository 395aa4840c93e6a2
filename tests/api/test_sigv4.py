"""`SigV4Verifier` against requests that botocore's own signers signed: header auth for JSON
and S3 (unnormalized paths), presigned v4 and legacy v2 URLs; and what tampering it catches."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import parse_qsl, urlsplit

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from salvia.api.auth import SigV4Verifier, botocore_head
from salvia.api.sigv4_claims import SignatureRefused, read_signature

KEY, SECRET = "AKIAEXAMPLE000000000", "secret/with+chars=="
CREDENTIALS = Credentials(KEY, SECRET)


def wire(request: AWSRequest) -> tuple[str, str, list[tuple[bytes, bytes]], bytes]:
    """What the server sees of a prepared request: path, query, headers, body."""
    parts = urlsplit(request.url)
    headers = [(k.lower().encode(), v.encode() if isinstance(v, str) else v)
               for k, v in request.headers.items()]  # fmt: skip
    headers.append((b"host", parts.netloc.encode()))
    body = request.body or b""
    return parts.path, parts.query, headers, body if isinstance(body, bytes) else body.encode()


def verify(request: AWSRequest, method: str | None = None, body: bytes | None = None) -> None:
    path, query, headers, sent = wire(request)
    signed = read_signature(headers, parse_qsl(query, keep_blank_values=True))
    assert signed is not None
    SigV4Verifier().check_time(signed, time.time())
    payload = signed.payload_hash or hashlib.sha256(sent if body is None else body).hexdigest()
    SigV4Verifier().verify(SECRET, method or request.method, path, query, headers, signed, payload)


def json_request() -> AWSRequest:
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:8484/",
        data=b'{"TrainingJobName": "a"}',
        headers={"X-Amz-Target": "SageMaker.DescribeTrainingJob",
                 "Content-Type": "application/x-amz-json-1.1"},
    )  # fmt: skip
    botocore.auth.SigV4Auth(CREDENTIALS, "sagemaker", "us-east-1").add_auth(request)
    return request


def test_a_json_request_verifies_and_a_changed_one_does_not() -> None:
    verify(json_request())
    with pytest.raises(SignatureRefused):
        verify(json_request(), body=b'{"TrainingJobName": "b"}')
    with pytest.raises(SignatureRefused):
        verify(json_request(), method="PUT")
    tampered = json_request()
    tampered.headers.replace_header("X-Amz-Target", "SageMaker.DeleteTrainingJob")
    with pytest.raises(SignatureRefused):
        verify(tampered)


def test_an_s3_request_signs_its_path_as_sent() -> None:
    request = AWSRequest(
        method="GET", url="http://127.0.0.1:8484/bucket/a%20b/c%2Bd~e?list-type=2&prefix=a%20b"
    )
    botocore.auth.S3SigV4Auth(CREDENTIALS, "s3", "us-east-1").add_auth(request)
    verify(request)


def test_presigned_urls_v4_and_legacy_v2() -> None:
    request = AWSRequest(method="GET", url="http://127.0.0.1:8484/bucket/some%20key.txt")
    botocore.auth.S3SigV4QueryAuth(CREDENTIALS, "s3", "us-east-1", expires=60).add_auth(request)
    verify(request)
    legacy = AWSRequest(method="GET", url="http://127.0.0.1:8484/bucket/some%20key.txt")
    botocore.auth.HmacV1QueryAuth(CREDENTIALS, expires=60).add_auth(legacy)
    verify(legacy)
    with pytest.raises(SignatureRefused):
        verify(legacy, method="DELETE")


def test_old_and_future_requests_are_outside_the_skew_limit() -> None:
    request = json_request()
    _, _, headers, _ = wire(request)
    signed = read_signature(headers, [])
    assert signed is not None
    verifier = SigV4Verifier()
    verifier.check_time(signed, signed.timestamp + 299)
    with pytest.raises(SignatureRefused, match="Signature expired"):
        verifier.check_time(signed, signed.timestamp + 301)
    with pytest.raises(SignatureRefused, match="not yet current"):
        verifier.check_time(signed, signed.timestamp - 301)


def test_the_one_pass_check_of_botocore_calls_accepts_what_verify_accepts() -> None:
    """`accepts_botocore_post` (the guard's short path) says True exactly for the untouched
    request; any change, or a header shape it does not handle, is False (left to `verify`)."""

    def accepts(request: AWSRequest, body: bytes | None = None, **changed: bytes) -> bool:
        _, _, headers, sent = wire(request)
        by_name = {**dict(headers), **{k.encode(): v for k, v in changed.items()}}
        authorization = by_name[b"authorization"]
        head = botocore_head(authorization[:-64])
        assert head is not None
        payload = hashlib.sha256(sent if body is None else body).hexdigest()
        return SigV4Verifier().accepts_botocore_post(
            SECRET, head, by_name, by_name[b"x-amz-date"], authorization[-64:], payload
        )

    request = json_request()
    verify(request)
    assert accepts(request)
    assert not accepts(request, body=b'{"TrainingJobName": "b"}')
    assert not accepts(request, **{"x-amz-target": b"SageMaker.DeleteTrainingJob"})
    assert not accepts(request, **{"x-amz-date": b"20200101T000000Z"})
    assert not accepts(request, **{"content-type": b"application/x-amz-json-1.1 \xe9"})
    signature = request.headers["Authorization"]
    forged = (signature[:-64] + "0" * 64).encode()
    assert not accepts(request, authorization=forged)
    assert (
        botocore_head(
            b"AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/s/aws4_request, "
            b"SignedHeaders=content-type;x-amz-date, Signature="
        )
        is None
    )  # no host
