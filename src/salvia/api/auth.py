"""SigV4 `Authorization` headers: parsed (and so rejected when malformed), not yet verified.

In the default "open" mode any well-formed signature is accepted; checking keys comes later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from salvia.errors import IncompleteSignature

ALGORITHM = "AWS4-HMAC-SHA256"
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Credential:
    access_key: str
    date: str
    region: str
    service: str


def parse_authorization(header: str | None) -> Credential | None:
    """The credential scope of a SigV4 header; None for an unsigned request."""
    if header is None:
        return None
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
    scope = params["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise IncompleteSignature(
            "Credential should be scoped to a valid region, date, service and 'aws4_request'."
        )
    signature = params["Signature"]
    if not _SIGNATURE.fullmatch(signature):
        raise IncompleteSignature("Signature must be 64 lowercase hexadecimal characters.")
    date = scope[1]
    if len(date) != 8 or not date.isdigit():
        raise IncompleteSignature(f"Credential date {date[:20]!r} is not in yyyyMMdd form.")
    return Credential(access_key=scope[0], date=date, region=scope[2], service=scope[3])
