"""The S3 side of the access guard: which actions an S3 request asks for (DeleteObjects' keys
one by one), and its body checked as it streams against what was signed (the payload's
SHA-256, or each chunk's signature of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from salvia.api import access_map
from salvia.api import s3_xml as xml
from salvia.api.auth import EMPTY_SHA256, STREAMING_PAYLOAD, SigV4Verifier
from salvia.api.s3_request import S3Request
from salvia.api.s3_xml import S3Error
from salvia.api.sigv4_claims import SignedRequest

Receive = Callable[[], Awaitable[Any]]
_HEX64 = frozenset("0123456789abcdef")


def s3_access(
    scope: Any, body: bytes | None, suffixes: tuple[str, ...], context: dict[str, list[str]]
) -> list[tuple[str, str]]:
    """(action, resource) pairs of one S3 request; adds `s3:prefix` & co. to `context`."""

    async def nothing() -> Any:
        return {"type": "http.request", "body": b""}

    try:
        request = S3Request(scope, nothing, suffixes)
    except S3Error:
        return [("s3:ListAllMyBuckets", "*")]
    query = request.query
    for name in ("prefix", "delimiter", "max-keys"):
        if name in query:
            context[f"s3:{name}"] = [query[name]]
    access = access_map.s3_access(
        request.method, request.bucket, request.key, query, request.headers
    )
    if access[0][0] == "s3:DeleteObject" and body is not None:
        keys = _delete_keys(body)
        if keys:
            access = [("s3:DeleteObject", access_map.s3_arn(request.bucket, k)) for k in keys]
    return access


def checked_body(
    verifier: SigV4Verifier, secret: str, signed: SignedRequest, receive: Receive
) -> Receive:
    """`receive`, refusing (as S3 does) a body that is not the one that was signed."""
    claimed = signed.payload_hash or ""
    if claimed == STREAMING_PAYLOAD:
        return ChunkChecker(verifier, secret, signed, receive)
    if len(claimed) != 64 or not set(claimed) <= _HEX64 or claimed == EMPTY_SHA256:
        return receive  # UNSIGNED-PAYLOAD, unsigned trailers, or nothing to check
    digest = hashlib.sha256()

    async def checked() -> Any:
        message = await receive()
        if message["type"] == "http.request":
            digest.update(message.get("body", b""))
            if not message.get("more_body", False) and digest.hexdigest() != claimed:
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                )
        return message

    return checked


class ChunkChecker:
    """Receives an aws-chunked body and checks each chunk's signature as it passes."""

    def __init__(
        self, verifier: SigV4Verifier, secret: str, signed: SignedRequest, receive: Receive
    ) -> None:
        self.verifier, self.secret, self.signed, self.receive = verifier, secret, signed, receive
        self.previous = signed.signature
        self.buffer = bytearray()
        self.state = "size"
        self.remaining = 0
        self.claimed = ""
        self.data = bytearray()

    async def __call__(self) -> Any:
        message = await self.receive()
        if message["type"] == "http.request":
            self._feed(message.get("body", b""))
            if not message.get("more_body", False) and self.state not in ("done", "trailer"):
                raise S3Error("IncompleteBody", "The aws-chunked body ended in the middle")
        return message

    def _feed(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            if self.state == "data":
                take = min(self.remaining, len(buffer))
                self.data += buffer[:take]
                del buffer[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self._check()
                self.state = "crlf"
            elif self.state == "crlf":
                if len(buffer) < 2:
                    return
                del buffer[:2]
                self.state = "size"
            elif self.state == "size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buffer[:end]).decode("latin-1")
                del buffer[: end + 2]
                size, _, extension = line.partition(";")
                name, _, self.claimed = extension.partition("=")
                try:
                    self.remaining = int(size.strip(), 16)
                except ValueError:
                    raise S3Error("IncompleteBody", "Malformed aws-chunked body") from None
                if name.strip() != "chunk-signature":
                    raise S3Error("SignatureDoesNotMatch", "A chunk carries no chunk-signature")
                if self.remaining == 0:
                    self._check()
                    self.state = "trailer"
                    return
                self.state = "data"
            else:
                buffer.clear()
                return

    def _check(self) -> None:
        wanted = self.verifier.chunk_signature(
            self.secret, self.signed, self.previous, bytes(self.data)
        )
        if not hmac.compare_digest(wanted, self.claimed.strip()):
            raise S3Error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
        self.previous = wanted
        self.data.clear()


def _delete_keys(body: bytes) -> list[str]:
    try:
        document = xml.parse_xml(body, "Delete")
    except S3Error:
        return []
    return [xml.child_text(obj, "Key") or "" for obj in document.findall("Object")]
