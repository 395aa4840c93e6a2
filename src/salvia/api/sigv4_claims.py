"""What a request claims about its signature, read without checking it: the SigV4 `Authorization`
header (or presigned query, or S3's legacy SigV2 presigned query) as a `SignedRequest`.

`parse_authorization` only checks the header's shape (what "open" mode needs); `auth` verifies
a claim. Malformed claims raise `IncompleteSignature`; `SignatureRefused` is the refusal both
raise, whose `code` is the JSON protocols' wire code and `s3_code` the one S3 answers in its XML.
"""

from __future__ import annotations

import calendar
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from salvia.errors import IncompleteSignature

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
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
def botocore_head_parts(head: str) -> tuple[Credential, tuple[str, ...]] | None:
    """A client's header up to its signature: the same for all its requests of a day."""
    fast = _BOTOCORE_HEAD.fullmatch(head)
    if fast is None:
        return None
    key, date, region, service, signed = fast.groups()
    return Credential(key, date, region, service), tuple(signed.split(";"))


def _parse_header(header: str) -> tuple[Credential, tuple[str, ...], str]:
    head, signature = header[:-64], header[-64:]
    fast = botocore_head_parts(head) if head.endswith("Signature=") else None
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


def _from_http_date(value: str) -> str | None:
    import email.utils

    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed.strftime("%Y%m%dT%H%M%SZ")
