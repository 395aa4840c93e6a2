"""SigV4 verification: a request's claimed signature (read by `sigv4_claims`) checked the way
botocore signs.

`SigV4Verifier` recomputes the signature of a request from its canonical form (method, URI,
query, signed headers, payload hash), the string to sign and the derived signing key, exactly as
botocore's `SigV4Auth` (`S3SigV4Auth` for the `s3` signing name: its path is not normalized) and
its presigning counterparts build them. Derived keys are cached per (secret, date, region,
service), so a request costs two HMACs and one SHA-256 of the canonical request. Failures raise
`SignatureRefused`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from botocore.utils import normalize_url_path

from salvia.api.sigv4_claims import (
    ALGORITHM,
    Credential,
    SignatureRefused,
    SignedRequest,
    botocore_head_parts,
)

STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# AWS refuses a request whose X-Amz-Date is further than this from its own clock: the limit on
# how long a captured request can be replayed.
MAX_SKEW_SECONDS = 5 * 60


def _mismatch() -> SignatureRefused:
    return SignatureRefused(
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service documentation "
        "for details.",
        "SignatureDoesNotMatch",
    )


# botocore's HmacV1Auth.QSAOfInterest: the sub-resources that S3's legacy signature covers
_SUBRESOURCES = frozenset(
    (
        "accelerate", "acl", "cors", "defaultObjectAcl", "location", "logging", "partNumber",
        "policy", "requestPayment", "torrent", "versioning", "versionId", "versions", "website",
        "uploads", "uploadId", "response-content-type", "response-content-language",
        "response-expires", "response-cache-control", "response-content-disposition",
        "response-content-encoding", "delete", "lifecycle", "tagging", "restore", "storageClass",
        "notification", "replication", "analytics", "metrics", "inventory", "select",
        "select-type", "object-lock",
    )
)  # fmt: skip


def legacy_expected(secret: str, method: str, raw_path: str, raw_query: str) -> str:
    """The signature of an S3 SigV2 presigned URL (botocore's HmacV1QueryAuth)."""
    import base64

    pairs = [pair.split("=", 1) for pair in raw_query.split("&") if pair]
    params = {pair[0]: unquote(pair[1]) if len(pair) > 1 else "" for pair in pairs}
    amz = sorted(
        (k.lower(), v.strip()) for k, v in params.items() if k.lower().startswith("x-amz-")
    )
    lines = [method, params.get("content-md5", ""), params.get("content-type", ""),
             params.get("Expires", "")]  # fmt: skip
    lines += [f"{key}:{value}" for key, value in amz]
    resource = raw_path
    chosen = sorted(
        (p[0], unquote(p[1])) if len(p) > 1 else (p[0],) for p in pairs if p[0] in _SUBRESOURCES
    )
    if chosen:
        resource += "?" + "&".join("=".join(item) for item in chosen)
    lines.append(resource)
    digest = hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _quote_query(text: str) -> str:
    return quote(unquote(text), safe="-_.~")


def canonical_query(raw_query: str, presigned: bool) -> str:
    pairs = []
    for pair in raw_query.split("&") if raw_query else ():
        key, _, value = pair.partition("=")
        if presigned and key == "X-Amz-Signature":
            continue
        pairs.append((_quote_query(key.replace("+", " ")), _quote_query(value.replace("+", " "))))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


@functools.lru_cache(maxsize=4096)
def _canonical_path(raw_path: str) -> str:
    return quote(normalize_url_path(raw_path or "/"), safe="/~")


@functools.lru_cache(maxsize=256)
def _header_names(signed_headers: tuple[str, ...]) -> tuple[bytes, ...] | None:
    """The signed header names as the wire has them; None when one is named twice (a list
    botocore never signs, and no request can match)."""
    names = tuple(name.encode("latin-1") for name in signed_headers)
    return names if len(set(names)) == len(names) else None


def _canonical_value(value: bytes) -> bytes:
    # botocore signs str values as UTF-8 and http.client sends them as latin-1
    return " ".join(value.decode("latin-1").split()).encode()


def canonical_headers(
    headers: Sequence[tuple[bytes, bytes]],
    signed_headers: tuple[str, ...],
    by_name: dict[bytes, bytes] | None = None,
) -> bytes:
    """`name:value` lines of the signed headers, in the order the client listed them (botocore
    sorts them: a list in any other order signs a different canonical request); a header sent
    more than once has its values joined by commas. `by_name`: `dict(headers)`, when the caller
    has it already."""
    names = _header_names(signed_headers)
    if names is None:
        raise _mismatch()
    found = dict(headers) if by_name is None else by_name
    lines = []
    if len(found) == len(headers):  # every header once: the common case
        for name in names:
            value = found.get(name)
            if value is None:
                raise _mismatch()
            # an ASCII value splits as its str would, but for \x1c-\x1f: control characters
            # that HTTP servers refuse in field values (one that got here would not verify)
            lines.append(
                name + b":" + b" ".join(value.split())
                if value.isascii()
                else name + b":" + _canonical_value(value)
            )
    else:
        values: dict[bytes, list[bytes]] = {}
        for name, value in headers:
            if name in names:
                values.setdefault(name, []).append(_canonical_value(value))
        for name in names:
            if name not in values:
                raise _mismatch()
            lines.append(name + b":" + b",".join(values[name]))
    lines.append(b"")
    return b"\n".join(lines)


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[bytes, bytes]],
    signed: SignedRequest,
    payload_hash: str,
    by_name: dict[bytes, bytes] | None = None,
) -> bytes:
    path = raw_path or "/" if signed.credential.service == "s3" else _canonical_path(raw_path)
    query = canonical_query(raw_query, signed.presigned) if raw_query else ""
    return b"".join(
        (
            f"{method}\n{path}\n{query}\n".encode(),
            canonical_headers(headers, signed.signed_headers, by_name),
            b"\n",
            _header_list(signed.signed_headers),
            b"\n",
            payload_hash.encode(),
        )
    )


@functools.lru_cache(maxsize=256)
def _header_list(signed_headers: tuple[str, ...]) -> bytes:
    return ";".join(signed_headers).encode()


@functools.lru_cache(maxsize=1024)
def _credential_scope(credential: Credential) -> str:
    return f"{credential.date}/{credential.region}/{credential.service}/aws4_request"


@dataclass(frozen=True, slots=True)
class BotocoreHead:
    """A botocore `Authorization` header up to its signature, in the forms verifying needs: the
    same for all of a client's requests of a day, so worked out once."""

    credential: Credential
    signed_headers: tuple[str, ...]
    names: tuple[bytes, ...]  # the signed header names as the wire has them
    header_list: bytes  # "content-type;host;..."
    scope: bytes  # "<date>/<region>/<service>/aws4_request"


@functools.lru_cache(maxsize=1024)
def botocore_head(head: bytes) -> BotocoreHead | None:
    """`head`: an `Authorization` header less its 64 signature characters. None unless it has
    botocore's exact shape and signs `host`, each header once."""
    parsed = botocore_head_parts(head.decode("latin-1"))
    if parsed is None:
        return None
    credential, signed = parsed
    names = _header_names(signed)
    if names is None or b"host" not in names:
        return None
    return BotocoreHead(credential, signed, names, _header_list(signed),
                        _credential_scope(credential).encode())  # fmt: skip


class SigV4Verifier:
    """Checks signatures against known secrets. Thread-safe (its caches only grow by whole
    entries, and a lost race recomputes the same key)."""

    def __init__(self, max_skew_seconds: float = MAX_SKEW_SECONDS) -> None:
        self.max_skew = max_skew_seconds
        self._keys: dict[tuple[str, Credential], _SigningKey] = {}

    def signing_key(self, secret: str, credential: Credential) -> _SigningKey:
        """The key derived for one (secret, date, region, service), kept until the cache fills."""
        cache_key = (secret, credential)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            derived = _hmac(f"AWS4{secret}".encode(), credential.date)
            for part in (credential.region, credential.service, "aws4_request"):
                derived = _hmac(derived, part)
            key = self._keys[cache_key] = _SigningKey(derived)
        return key

    def check_time(self, signed: SignedRequest, now: float) -> None:
        if signed.version == 2:
            if now > signed.expires:
                raise SignatureRefused(
                    "AccessDeniedException", "Request has expired", "AccessDenied"
                )
            return
        if signed.amz_date[:8] != signed.credential.date:
            raise _mismatch()
        when = signed.timestamp
        if signed.presigned:
            if now > when + signed.expires:
                raise SignatureRefused(
                    "AccessDeniedException", "Request has expired", "AccessDenied"
                )
            if when - now > self.max_skew:
                raise SignatureRefused(
                    "InvalidSignatureException",
                    "Request is not valid yet",
                    "AccessDenied",
                )
            return
        if abs(now - when) > self.max_skew:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            earliest = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - self.max_skew))
            latest = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + self.max_skew))
            raise SignatureRefused(
                "InvalidSignatureException",
                f"Signature expired: {signed.amz_date} is now earlier than {earliest} "
                f"({stamp} - 5 min.)"
                if when < now
                else f"Signature not yet current: {signed.amz_date} is still later than {latest} "
                f"({stamp} + 5 min.)",
                "RequestTimeTooSkewed",
            )

    def expected(
        self,
        secret: str,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Sequence[tuple[bytes, bytes]],
        signed: SignedRequest,
        payload_hash: str,
        by_name: dict[bytes, bytes] | None = None,
    ) -> str:
        request = canonical_request(
            method, raw_path, raw_query, headers, signed, payload_hash, by_name
        )
        credential = signed.credential
        to_sign = (
            f"{ALGORITHM}\n{signed.amz_date}\n{_credential_scope(credential)}\n"
            f"{hashlib.sha256(request).hexdigest()}"
        )
        return self.signing_key(secret, credential).sign(to_sign.encode())

    def verify(
        self,
        secret: str,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: Sequence[tuple[bytes, bytes]],
        signed: SignedRequest,
        payload_hash: str,
        by_name: dict[bytes, bytes] | None = None,
    ) -> None:
        """`by_name`: `dict(headers)`, when the caller has it already."""
        if signed.version == 2:
            wanted = legacy_expected(secret, method, raw_path, raw_query)
            if not hmac.compare_digest(wanted, signed.signature):
                raise _mismatch()
            return
        if "host" not in signed.signed_headers:
            raise _mismatch()
        wanted = self.expected(
            secret, method, raw_path, raw_query, headers, signed, payload_hash, by_name
        )
        if not hmac.compare_digest(wanted, signed.signature):
            raise _mismatch()

    def accepts_botocore_post(
        self,
        secret: str,
        head: BotocoreHead,
        headers: dict[bytes, bytes],
        amz_date: bytes,
        signature: bytes,
        payload_hash: str,
    ) -> bool:
        """`verify` for the request botocore sends to the JSON and query protocols (`POST /`,
        no query string, every header once and ASCII), in one pass: True when its signature
        holds. False says nothing: anything else, and every refusal, is `verify`'s to decide.
        The caller has checked the clock (`check_time`)."""
        lines = []
        for name in head.names:
            value = headers.get(name)
            if value is None or not value.isascii():
                return False
            lines.append(name + b":" + b" ".join(value.split()))
        canonical = b"".join((b"POST\n/\n\n", b"\n".join(lines), b"\n\n", head.header_list,
                              b"\n", payload_hash.encode()))  # fmt: skip
        to_sign = b"".join((b"AWS4-HMAC-SHA256\n", amz_date, b"\n", head.scope, b"\n",
                            hashlib.sha256(canonical).hexdigest().encode()))  # fmt: skip
        wanted = self.signing_key(secret, head.credential).sign(to_sign)
        return hmac.compare_digest(wanted.encode(), signature)

    def chunk_signature(
        self, secret: str, signed: SignedRequest, previous: str, chunk: bytes
    ) -> str:
        """The signature of one chunk of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body."""
        credential = signed.credential
        scope = f"{credential.date}/{credential.region}/{credential.service}/aws4_request"
        to_sign = "\n".join(
            (
                "AWS4-HMAC-SHA256-PAYLOAD",
                signed.amz_date,
                scope,
                previous,
                EMPTY_SHA256,
                hashlib.sha256(chunk).hexdigest(),
            )
        )
        return self.signing_key(secret, credential).sign(to_sign.encode())


_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


class _SigningKey:
    """HMAC-SHA256 under one derived key, its padded key blocks hashed once: `hmac.digest`
    redoes that (and OpenSSL's digest lookup) on every call, about half of a signature's cost."""

    __slots__ = ("_inner", "_outer", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        block = key.ljust(64, b"\0")  # a derived key is 32 bytes, under SHA-256's block
        self._inner = hashlib.sha256(block.translate(_INNER_PAD))
        self._outer = hashlib.sha256(block.translate(_OUTER_PAD))

    def sign(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")
