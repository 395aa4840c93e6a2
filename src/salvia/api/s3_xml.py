"""S3's wire shapes: the error table and body, XML in and out, timestamps.

Every XML document S3 sends is a tree of elements in S3's namespace whose leaves are text; keys
and prefixes go in as text, so ElementTree escapes them.
"""

from __future__ import annotations

import email.utils
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime

from salvia.store.objects import ObjectStoreError

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_CONTENT_TYPE = "application/xml"

# HTTP status of each S3 error code Salvia answers.
S3_STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "InvalidAccessKeyId": 403,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidURI": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MetadataTooLarge": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotModified": 304,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
}


class S3Error(Exception):
    """An error answered in S3's XML shape; `headers` are added to the response."""

    def __init__(
        self,
        code: str,
        message: str,
        resource: str = "",
        headers: dict[str, str] | None = None,
        **details: str,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.resource = resource
        self.headers = headers or {}
        self.details = details

    @property
    def status(self) -> int:
        return S3_STATUS.get(self.code, 400)

    @classmethod
    def from_store(cls, error: ObjectStoreError, resource: str) -> S3Error:
        return cls(error.code, error.message, resource)


def error_xml(error: S3Error, request_id: str) -> bytes:
    root = ET.Element("Error")
    add(root, "Code", error.code)
    add(root, "Message", error.message)
    for name, value in error.details.items():
        add(root, name, value)
    if error.resource:
        add(root, "Resource", error.resource)
    add(root, "RequestId", request_id)
    return to_bytes(root)  # S3's error documents carry no namespace


def document(tag: str) -> ET.Element:
    root = ET.Element(tag)
    root.set("xmlns", S3_NAMESPACE)
    return root


def to_bytes(root: ET.Element) -> bytes:
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode("utf-8")


def add(parent: ET.Element, tag: str, text: str | int | bool | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if isinstance(text, bool):
        child.text = "true" if text else "false"
    elif text is not None:
        child.text = str(text)
    return child


def add_all(parent: ET.Element, fields: Iterable[tuple[str, str | int | bool | None]]) -> None:
    for tag, text in fields:
        if text is not None:
            add(parent, tag, text)


def parse_xml(body: bytes, root_tag: str) -> ET.Element:
    """Parse a request document, namespaces stripped; MalformedXML if it is not `root_tag`."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error("MalformedXML", f"The XML you provided was not well-formed: {exc}") from None
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    if root.tag != root_tag:
        raise S3Error("MalformedXML", f"Expected a <{root_tag}> document, got <{root.tag}>")
    return root


def child_text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None else (child.text or "")


def iso_time(moment: datetime) -> str:
    """S3's XML timestamps: 2024-05-01T12:00:00.000Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def http_time(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def parse_http_time(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
