"""The request side of the S3 protocol: addressing, query parameters, conditional headers."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.datastructures import Headers
from starlette.types import Receive, Scope

from salvia.api import s3_xml as xml
from salvia.api.s3_xml import S3Error
from salvia.store.objects import ObjectInfo

MAX_METADATA_BYTES = 2048

# Query parameters that never name an operation: presigned-URL signatures and botocore's hint.
IGNORED_PARAMS = {"x-id", "AWSAccessKeyId", "Signature", "Expires"}


class S3Request:
    """One HTTP request as S3 addresses it: bucket and key decoded from the path (or the
    Host), query parameters, headers."""

    def __init__(self, scope: Scope, receive: Receive, virtual_host_suffixes: tuple[str, ...]):
        self.method: str = scope["method"]
        self.receive = receive
        self.headers = Headers(scope=scope)
        raw_query = scope.get("query_string", b"").decode("utf-8", "replace")
        self.query = dict(parse_qsl(raw_query, keep_blank_values=True))
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "The request path is not valid UTF-8") from None
        path = path[1:] if path.startswith("/") else path
        host = self.headers.get("host", "").lower()
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        self.host = host
        self.bucket, self.key = "", ""
        for suffix in virtual_host_suffixes:
            if hostname.endswith("." + suffix):
                self.bucket, self.key = hostname[: -len(suffix) - 1], path
                break
        else:
            self.bucket, _, self.key = path.partition("/")
        self.resource = f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def operation_params(self) -> set[str]:
        return {
            name
            for name in self.query
            if name not in IGNORED_PARAMS and not name.lower().startswith("x-amz-")
        }

    def not_implemented(self, what: str) -> S3Error:
        return S3Error(
            "NotImplemented",
            f"Salvia's S3 does not implement {what} ({self.method} {self.resource}"
            f"{'?' + '&'.join(sorted(self.operation_params())) if self.query else ''})",
            self.resource,
        )

    def require_only(self, allowed: set[str], what: str) -> None:
        extra = self.operation_params() - allowed
        if extra:
            raise self.not_implemented(f"{what} with ?{sorted(extra)[0]}")

    def int_param(self, name: str, default: int | None, low: int, high: int | None) -> int:
        raw = self.query.get(name)
        if raw is None:
            if default is None:
                raise S3Error("InvalidArgument", f"{name} is required", self.resource)
            return default
        if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise S3Error(
                "InvalidArgument", f"{name} must be an integer {bounds}, got {raw!r}", self.resource
            )
        return int(raw)


def object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": xml.http_time(info.last_modified),
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
    }
    for name, value in info.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    return headers


def check_latin1(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise S3Error("InvalidArgument", f"Header {name} cannot be sent as latin-1") from None


def content_type_and_metadata(headers: Headers) -> tuple[str | None, dict[str, str]]:
    metadata = {
        name[len("x-amz-meta-") :]: value
        for name, value in headers.items()
        if name.startswith("x-amz-meta-")
    }
    size = sum(len(name) + len(value) for name, value in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise S3Error(
            "MetadataTooLarge",
            f"Your metadata headers exceed the maximum allowed metadata size "
            f"({size} > {MAX_METADATA_BYTES} bytes)",
        )
    return headers.get("content-type"), metadata


def check_conditions(request: S3Request, info: ObjectInfo) -> None:
    headers = request.headers
    etag = f'"{info.etag}"'
    modified = info.last_modified.replace(microsecond=0)

    def matches(value: str) -> bool:
        tags = [tag.strip() for tag in value.split(",")]
        return "*" in tags or etag in tags or info.etag in tags

    failed = S3Error(
        "PreconditionFailed", "At least one of the pre-conditions you specified did not hold"
    )
    if "if-match" in headers and not matches(headers["if-match"]):
        raise failed
    since = xml.parse_http_time(headers.get("if-unmodified-since", ""))
    if "if-match" not in headers and since is not None and modified > since:
        raise failed
    if "if-none-match" in headers:
        if matches(headers["if-none-match"]):
            raise _not_modified(info)
    else:
        since = xml.parse_http_time(headers.get("if-modified-since", ""))
        if since is not None and modified <= since:
            raise _not_modified(info)


def _not_modified(info: ObjectInfo) -> S3Error:
    headers = {"ETag": f'"{info.etag}"', "Last-Modified": xml.http_time(info.last_modified)}
    return S3Error("NotModified", "Not Modified", headers=headers)


def encode_token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8")).decode("ascii")


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect") from None
