"""The AWS event-stream framing (`application/vnd.amazon.eventstream`) of streamed responses,
as botocore's `EventStream` parser reads it.

A message is: total length and headers length (big-endian uint32), the CRC32 of those 8 bytes,
the headers, the payload, and the CRC32 of everything before it. A header is its name's length
(uint8), the name, a value type (7: string), the value's length (uint16) and the value.
"""

from __future__ import annotations

import struct
import zlib

import orjson

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING = 7


def _headers(headers: dict[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        encoded_name, encoded_value = name.encode("utf-8"), value.encode("utf-8")
        out += struct.pack(">B", len(encoded_name)) + encoded_name
        out += struct.pack(">BH", _STRING, len(encoded_value)) + encoded_value
    return bytes(out)


def message(headers: dict[str, str], payload: bytes) -> bytes:
    encoded = _headers(headers)
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return body + struct.pack(">I", zlib.crc32(body))


def payload_part(data: bytes) -> bytes:
    """A `PayloadPart` event: its `Bytes` member is the payload itself."""
    return message(
        {
            ":event-type": "PayloadPart",
            ":content-type": "application/octet-stream",
            ":message-type": "event",
        },
        data,
    )


def model_stream_error(error_code: str, text: str) -> bytes:
    """The `ModelStreamError` exception event that ends a stream the model broke off."""
    return message(
        {
            ":exception-type": "ModelStreamError",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        orjson.dumps({"Message": text, "ErrorCode": error_code}),
    )
