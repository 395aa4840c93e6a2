"""Request bodies of the S3 protocol: spooled to disk as they arrive, aws-chunked decoded.

botocore may send a PUT body in the `aws-chunked` content encoding (`x-amz-content-sha256:
STREAMING-...`): `hex-size[;chunk-signature=...]\\r\\n data \\r\\n` repeated, ended by a zero-size
chunk and optional trailer lines (checksums). Only the data reaches the object.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import Receive

from salvia.api.s3_xml import S3Error
from salvia.store.objects import ByteRange

_FLUSH_AT = 1024 * 1024
_MAX_LINE = 64 * 1024


class ClientDisconnect(Exception):
    """The client went away before sending the whole body."""


class AwsChunkedDecoder:
    """Incremental decoder of the aws-chunked encoding; signatures are not checked here."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "size"
        self._remaining = 0
        self.trailers: dict[str, str] = {}

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while True:
            if self._state == "data":
                take = min(self._remaining, len(buffer))
                if take == 0:
                    break
                out += buffer[:take]
                del buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "crlf"
            elif self._state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise _malformed("a chunk's data is not followed by CRLF")
                del buffer[:2]
                self._state = "size"
            elif self._state in ("size", "trailer"):
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > _MAX_LINE:
                        raise _malformed("a chunk header line is too long")
                    break
                line = bytes(buffer[:end]).decode("latin-1")
                del buffer[: end + 2]
                if self._state == "size":
                    self._start_chunk(line)
                elif not line:
                    self._state = "done"
                else:
                    name, _, value = line.partition(":")
                    self.trailers[name.strip().lower()] = value.strip()
            else:  # done: anything after the final CRLF is ignored
                buffer.clear()
                break
        return bytes(out)

    def _start_chunk(self, line: str) -> None:
        try:
            size = int(line.split(";", 1)[0].strip(), 16)
        except ValueError:
            raise _malformed(f"bad chunk size line {line[:40]!r}") from None
        if size < 0:
            raise _malformed("negative chunk size")
        self._remaining = size
        self._state = "data" if size else "trailer"

    def finish(self) -> None:
        # A stream may end right after the zero-size chunk, without the final empty line.
        if self._state not in ("trailer", "done") or self._buffer.strip():
            raise S3Error("IncompleteBody", "The aws-chunked body ended in the middle of a chunk")


def _malformed(why: str) -> S3Error:
    return S3Error("IncompleteBody", f"Malformed aws-chunked body: {why}")


def is_aws_chunked(headers: Headers) -> bool:
    encodings = [e.strip().lower() for e in headers.get("content-encoding", "").split(",")]
    return "aws-chunked" in encodings or headers.get("x-amz-content-sha256", "").startswith(
        "STREAMING-"
    )


@dataclass
class SpooledBody:
    path: Path
    size: int
    md5_hex: str
    trailers: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _Sink:
    """A temp file plus the MD5 of what went into it; written from a worker thread."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix="body-")
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self.digest = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.file.write(data)
        self.size += len(data)


async def _chunks(receive: Receive) -> Any:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


async def spool_body(
    receive: Receive, headers: Headers, directory: Path, max_size: int
) -> SpooledBody:
    """Write the request body to a temp file in `directory`, decoding aws-chunked; checks the
    declared decoded length and Content-MD5. The caller owns (and must discard) the file."""
    decoder = AwsChunkedDecoder() if is_aws_chunked(headers) else None
    sink = await anyio.to_thread.run_sync(_Sink, directory)
    try:
        pending = bytearray()
        async for chunk in _chunks(receive):
            pending += decoder.feed(chunk) if decoder else chunk
            if sink.size + len(pending) > max_size:
                raise S3Error(
                    "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
                )
            if len(pending) >= _FLUSH_AT:
                await anyio.to_thread.run_sync(sink.write, bytes(pending))
                pending.clear()
        if pending:
            await anyio.to_thread.run_sync(sink.write, bytes(pending))
        await anyio.to_thread.run_sync(sink.file.close)
        trailers = {}
        if decoder:
            decoder.finish()
            trailers = decoder.trailers
        _check_length(headers, sink.size, decoder is not None)
        md5_hex = sink.digest.hexdigest()
        _check_md5(headers, md5_hex)
        return SpooledBody(sink.path, sink.size, md5_hex, trailers)
    except BaseException:
        sink.file.close()
        sink.path.unlink(missing_ok=True)
        raise


async def read_small_body(receive: Receive, headers: Headers, max_size: int) -> bytes:
    """A request document (XML) read into memory, refusing one larger than `max_size`."""
    decoder = AwsChunkedDecoder() if is_aws_chunked(headers) else None
    body = bytearray()
    async for chunk in _chunks(receive):
        body += decoder.feed(chunk) if decoder else chunk
        if len(body) > max_size:
            raise S3Error("MalformedXML", f"The request document is larger than {max_size} bytes")
    if decoder:
        decoder.finish()
    _check_md5(headers, hashlib.md5(body, usedforsecurity=False).hexdigest())
    return bytes(body)


def _check_length(headers: Headers, size: int, decoded: bool) -> None:
    declared = headers.get("x-amz-decoded-content-length") if decoded else None
    if declared is None:
        return
    if not declared.isdigit() or int(declared) != size:
        raise S3Error(
            "IncompleteBody",
            f"You did not provide the number of bytes specified by "
            f"x-amz-decoded-content-length ({declared}); got {size}",
        )


def _check_md5(headers: Headers, md5_hex: str) -> None:
    claimed = headers.get("content-md5")
    if claimed is None:
        return
    try:
        expected = base64.b64decode(claimed, validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest", "The Content-MD5 you specified is not valid") from None
    if len(expected) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified is not valid")
    if expected.hex() != md5_hex:
        raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we received")


def parse_range(value: str | None) -> ByteRange | None:
    """One `bytes=first-last` range; None (serve everything) for anything else, as S3 does."""
    if not value or not value.startswith("bytes="):
        return None
    spec = value[len("bytes=") :].strip()
    if "," in spec or "-" not in spec:
        return None
    first, _, last = (part.strip() for part in spec.partition("-"))
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == ""):
        return None
    if first == "":
        return ByteRange(None, int(last)) if last else None
    if last and int(last) < int(first):
        return None
    return ByteRange(int(first), int(last) if last else None)
