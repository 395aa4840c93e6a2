"""Authentication for the access guard: who signed a request and whether its SigV4 signature
holds (header or presigned query; the body's hash for the JSON, query and REST protocols,
`x-amz-content-sha256` for S3), refusing what is older than the skew limit and the replay of a
mutating request that already succeeded.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from salvia.api import access_map
from salvia.api.auth import SigV4Verifier, botocore_head
from salvia.api.sigv4_claims import (
    AMZ_DATE_BYTES,
    UNSIGNED_PAYLOAD,
    SignatureRefused,
    SignedRequest,
    read_signature,
    unknown_key,
)
from salvia.iam import IdentityStore, Principal

Scope = Any


@dataclass(slots=True)
class Call:
    """One request as the access guard sees it, filled in as it is checked."""

    kind: str  # "json" | "query" | "rest" | "runtime" | "s3"
    service: str = ""  # IAM's service prefix for json calls ("sagemaker", "logs", ...)
    operation: str = ""
    body: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    read_only: bool = True
    access: list[tuple[str, str]] = field(default_factory=list)
    principal: Principal | None = None
    access_key: str = ""
    secret: str = ""
    needs_body: bool = True
    headers: dict[bytes, bytes] | None = None  # the request's, by name (the last of a repeat)


def refusal(code: str, message: str, s3_code: str = "AccessDenied", status: int = 403) -> Any:
    return SignatureRefused(code, message, s3_code, status)


def classify_reads(scope: Scope, call: Call) -> None:
    """Whether the call only reads (not audited, and never refused as a replay)."""
    if call.kind in ("json", "rest", "query"):
        call.read_only = access_map.is_read_only(call.operation)
    elif call.kind == "runtime":
        call.read_only = True  # invocations are the hot path, never audited on success
    else:
        call.read_only = scope["method"] in ("GET", "HEAD")


class Signatures:
    """Checks the signatures of requests against the keys `identities` knows. Thread-safe (its
    replay record holds whole entries)."""

    def __init__(self, identities: IdentityStore) -> None:
        self.identities = identities
        self.verifier = SigV4Verifier()
        # signatures of mutating requests that succeeded -> when their replay window ends
        self._seen: dict[str, float] = {}

    def authenticate(self, scope: Scope, call: Call) -> SignedRequest:
        """Who signed `call` (set on it with the key's secret), and that the signature holds:
        the one-pass check of a botocore JSON call, else the general one; refusals raise
        `SignatureRefused` (or `IncompleteSignature`)."""
        return self._accept_botocore(scope, call) or self._verify(scope, call)

    def remember(self, signed: SignedRequest) -> None:
        """A mutating request succeeded: its copies are refused until its signature expires."""
        self._seen[signed.signature] = signed.timestamp + self.verifier.max_skew + 1

    def _verify(self, scope: Scope, call: Call) -> SignedRequest:
        raw_query = scope.get("query_string", b"").decode("latin-1")
        query = parse_qsl(raw_query, keep_blank_values=True) if raw_query else []
        signed = read_signature(call.headers or scope["headers"], query)
        if signed is None:
            if call.kind == "s3":
                raise refusal("AccessDeniedException", "Access Denied", "AccessDenied")
            raise refusal(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
                "AccessDenied",
            )
        call.access_key = signed.credential.access_key
        found = self.identities.credentials(signed.credential.access_key, signed.security_token)
        if found is None:
            raise unknown_key()
        secret, principal = found
        call.principal = principal
        now = time.time()
        self.verifier.check_time(signed, now)
        raw = scope.get("raw_path")
        if raw == b"/":  # the JSON and query protocols' only path
            raw_path = "/"
        else:
            raw_path = (raw or quote(scope["path"]).encode()).decode("latin-1").split("?", 1)[0]
        if call.body is not None and call.kind != "s3":
            digest = hashlib.sha256(call.body).hexdigest()
            claimed = signed.payload_hash
            if claimed is not None and claimed != UNSIGNED_PAYLOAD and claimed != digest:
                raise refusal(
                    "InvalidSignatureException",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    "XAmzContentSHA256Mismatch",
                    400,
                )
            payload = claimed if claimed is not None else digest
        else:
            payload = signed.payload_hash or ""
            if not payload:
                raise refusal(
                    "InvalidRequest",
                    "Missing required header for this request: x-amz-content-sha256",
                    "InvalidRequest",
                    400,
                )
        self.verifier.verify(
            secret, scope["method"], raw_path, raw_query, scope["headers"], signed, payload,
            call.headers,
        )  # fmt: skip
        classify_reads(scope, call)
        if not call.read_only and not signed.presigned and call.kind != "s3":
            self.check_replay(signed.signature)
        call.secret = secret
        return signed

    def _accept_botocore(self, scope: Scope, call: Call) -> SignedRequest | None:
        """`_verify` in one pass for what nearly every JSON call is: botocore's signed
        `POST /` with no query string or `x-amz-content-sha256`. It only accepts: on anything
        else, or a signature that does not hold, None leaves the request to `_verify`,
        which also gives every refusal (and in the same order: unknown key, clock, signature)."""
        headers = call.headers
        if (
            headers is None
            or call.body is None
            or scope["method"] != "POST"
            or scope.get("raw_path") != b"/"
            or scope.get("query_string")
            or len(headers) != len(scope["headers"])  # a header sent twice
            or b"x-amz-content-sha256" in headers
        ):
            return None
        authorization = headers.get(b"authorization")
        amz_date = headers.get(b"x-amz-date")
        if authorization is None or amz_date is None or not AMZ_DATE_BYTES.fullmatch(amz_date):
            return None
        head = botocore_head(authorization[:-64])
        if head is None:
            return None
        token = headers.get(b"x-amz-security-token")
        token_text = None if token is None else token.decode("latin-1")
        found = self.identities.credentials(head.credential.access_key, token_text)
        if found is None:
            return None
        secret, principal = found
        date = amz_date.decode("latin-1")
        signature = authorization[-64:]
        signed = SignedRequest(head.credential, date, head.signed_headers,
                               signature.decode("latin-1"), False, None, token_text)  # fmt: skip
        self.verifier.check_time(signed, time.time())  # refuses as _authenticate would
        payload = hashlib.sha256(call.body).hexdigest()
        if not self.verifier.accepts_botocore_post(
            secret, head, headers, amz_date, signature, payload
        ):
            return None
        call.access_key, call.principal, call.secret = head.credential.access_key, principal, secret
        classify_reads(scope, call)
        if not call.read_only:
            self.check_replay(signed.signature)
        return signed

    def check_replay(self, signature: str) -> None:
        """Refuse a byte-identical copy of a mutating request that already succeeded.

        Only successes count: a client that repeats a refused call once it has fixed the cause
        (a `DeleteUser` after deleting the user's keys, in the same second) signs the same bytes.
        """
        now = time.time()
        if len(self._seen) > 100_000:
            self._seen = {s: t for s, t in self._seen.items() if t > now}
        expiry = self._seen.get(signature)
        if expiry is not None and expiry > now:
            raise refusal(
                "InvalidSignatureException",
                "Signature already used: a signed request that changes state is accepted once.",
                "AccessDenied",
            )
