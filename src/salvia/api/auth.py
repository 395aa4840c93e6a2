"""SigV4: `Authorization` headers parsed, and requests verified the way botocore signs them.

`parse_authorization` only checks the header's shape (what "open" mode needs). `SigV4Verifier`
recomputes the signature of a request from its canonical form (method, URI, query, signed headers,
payload hash), the string to sign and the derived signing key, exactly as botocore's `SigV4Auth`
(`S3SigV4Auth` for the `s3` signing name: its path is not normalized) and its presigning
counterparts build them. Derived keys are cached per (secret, date, region, service), so a request
costs two HMACs and one SHA-256 of the canonical request.

Failures raise `SignatureRefused`, whose `code` is the JSON protocols' wire code and `s3_code` the
one S3 answers in its XML.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote, unquote

from botocore.utils import normalize_url_path

from salvia.errors import IncompleteSignature

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# AWS refuses a request whose X-Amz-Date is further than this from its own clock: the limit on
# how long a captured request can be replayed.
MAX_SKEW_SECONDS = 5 * 60
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
AMZ_DATE_BYTES = re.compile(rb"\d{8}T\d{6}Z")


class Credential(NamedTuple):
    access_key: str
    date: str
    region: str
    service: str


class SignatureRefused(Exception):
    """A request whose signature does not hold; codes for the JSON protocols and for S3."""

    def __init__(self, code: str, message: str, s3_code: str, status: int = 403) -> None:
        super().__init__(message)
        self.code, self.message, self.s3_code, self.status = code, message, s3_code, status


def unknown_key() -> SignatureRefused:
    return SignatureRefused(
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
        "InvalidAccessKeyId",
    )


def _mismatch() -> SignatureRefused:
    return SignatureRefused(
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method. Consult the service documentation "
        "for details.",
        "SignatureDoesNotMatch",
    )


def parse_authorization(header: str | None) -> Credential | None:
    """The credential scope of a SigV4 header; None for an unsigned request."""
    if header is None:
        return None
    return _parse_header(header)[0]


# the shape every botocore-signed header has up to its signature; anything else takes the
# general path below
_BOTOCORE_HEAD = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request, "
    r"SignedHeaders=([^,\s]+), Signature="
)


@functools.lru_cache(maxsize=1024)
def _botocore_head(head: str) -> tuple[Credential, tuple[str, ...]] | None:
    """A client's header up to its signature: the same for all its requests of a day."""
    fast = _BOTOCORE_HEAD.fullmatch(head)
    if fast is None:
        return None
    key, date, region, service, signed = fast.groups()
    return Credential(key, date, region, service), tuple(signed.split(";"))


def _parse_header(header: str) -> tuple[Credential, tuple[str, ...], str]:
    head, signature = header[:-64], header[-64:]
    fast = _botocore_head(head) if head.endswith("Signature=") else None
    if fast is not None and _SIGNATURE.fullmatch(signature):
        return fast[0], fast[1], signature
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(
            f"Unsupported signing algorithm {algorithm[:40]!r}: only {ALGORITHM} is accepted."
        )
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            params[key] = value
    missing = [p for p in ("Credential", "SignedHeaders", "Signature") if not params.get(p)]
    if missing:
        needs = " ".join(f"Authorization header requires '{p}' parameter." for p in missing)
        raise IncompleteSignature(needs)
    credential = _scope(params["Credential"])
    signature = params["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise IncompleteSignature("Signature must be 64 lowercase hexadecimal characters.")
    return credential, tuple(params["SignedHeaders"].split(";")), signature


def _scope(text: str) -> Credential:
    scope = text.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise IncompleteSignature(
            "Credential should be scoped to a valid region, date, service and 'aws4_request'."
        )
    date = scope[1]
    if len(date) != 8 or not date.isdigit():
        raise IncompleteSignature(f"Credential date {date[:20]!r} is not in yyyyMMdd form.")
    return Credential(access_key=scope[0], date=date, region=scope[2], service=scope[3])


@dataclass(slots=True)
class SignedRequest:
    """What a request claims: who signed, when, over which headers, with which signature."""

    credential: Credential
    amz_date: str
    signed_headers: tuple[str, ...]
    signature: str
    presigned: bool
    payload_hash: str | None  # x-amz-content-sha256 when sent (always for S3), else None
    security_token: str | None
    expires: int = 0  # presigned URLs: seconds (SigV4) or the epoch second they end (SigV2)
    version: int = 4  # 2: S3's legacy query-string signature, which boto3 presigns by default

    @property
    def timestamp(self) -> float:
        if self.version == 2:
            return float(self.expires)
        return _epoch(self.amz_date)


@functools.lru_cache(maxsize=256)
def _epoch(amz_date: str) -> float:
    """yyyymmddTHHMMSSZ (checked when read) as epoch seconds; a second's requests share it."""
    d = amz_date
    fields = (int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[9:11]), int(d[11:13]), int(d[13:15]))
    return float(calendar.timegm(fields))


def read_signature(
    headers: Sequence[tuple[bytes, bytes]] | dict[bytes, bytes],
    query: Sequence[tuple[str, str]],
) -> SignedRequest | None:
    """The claimed signature of a request (header or presigned query); None when unsigned.
    `headers`: the request's list, or that list as a dict already (the last of a repeat).

    Malformed claims raise `IncompleteSignature`."""
    found = headers if isinstance(headers, dict) else dict(headers)
    authorization = found.get(b"authorization")
    if authorization is not None:
        credential, signed, signature = _parse_header(authorization.decode("latin-1"))
        amz_date = found.get(b"x-amz-date")
        date = amz_date.decode("latin-1") if amz_date is not None else None
        if date is None and b"date" in found:
            date = _from_http_date(found[b"date"].decode("latin-1"))
        if date is None or not _AMZ_DATE.fullmatch(date):
            raise IncompleteSignature(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                "header."
            )
        content_sha = found.get(b"x-amz-content-sha256")
        token = found.get(b"x-amz-security-token")
        return SignedRequest(
            credential,
            date,
            signed,
            signature,
            False,
            None if content_sha is None else content_sha.decode("latin-1"),
            None if token is None else token.decode("latin-1"),
        )
    params = dict(query)
    if params.get("X-Amz-Algorithm") is None and params.get("X-Amz-Signature") is None:
        if "AWSAccessKeyId" in params or "Signature" in params:
            return _legacy_presigned(params)
        return None
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise IncompleteSignature(f"X-Amz-Algorithm must be {ALGORITHM}.")
    missing = [
        p
        for p in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
        if not params.get(p)
    ]
    if missing:
        raise IncompleteSignature(f"Query-string authentication requires {', '.join(missing)}.")
    if not _AMZ_DATE.fullmatch(params["X-Amz-Date"]):
        raise IncompleteSignature("X-Amz-Date must be in the ISO8601 basic format.")
    expires = params.get("X-Amz-Expires", "")
    if not expires.isdigit() or not 0 < int(expires) <= MAX_PRESIGN_EXPIRES:
        raise IncompleteSignature(
            f"X-Amz-Expires must be a number of seconds from 1 to {MAX_PRESIGN_EXPIRES}."
        )
    if not _SIGNATURE.fullmatch(params["X-Amz-Signature"]):
        raise IncompleteSignature("Signature must be 64 lowercase hexadecimal characters.")
    return SignedRequest(
        _scope(params["X-Amz-Credential"]),
        params["X-Amz-Date"],
        tuple(params["X-Amz-SignedHeaders"].split(";")),
        params["X-Amz-Signature"],
        True,
        UNSIGNED_PAYLOAD,
        params.get("X-Amz-Security-Token"),
        int(expires),
    )


def _legacy_presigned(params: dict[str, str]) -> SignedRequest:
    missing = [p for p in ("AWSAccessKeyId", "Signature", "Expires") if not params.get(p)]
    if missing or not params["Expires"].isdigit():
        raise IncompleteSignature(
            "Query-string authentication requires the Signature, Expires and AWSAccessKeyId "
            "parameters"
        )
    return SignedRequest(
        Credential(params["AWSAccessKeyId"], "", "", "s3"),
        "",
        (),
        params["Signature"],
        True,
        UNSIGNED_PAYLOAD,
        params.get("x-amz-security-token"),
        int(params["Expires"]),
        version=2,
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


def _from_http_date(value: str) -> str | None:
    import email.utils

    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.strftime("%Y%m%dT%H%M%SZ")


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
    parsed = _botocore_head(head.decode("latin-1"))
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
