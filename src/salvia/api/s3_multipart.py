"""Multipart uploads in progress, kept in the server's scratch directory until completed.

    <root>/<upload id>/upload.json      bucket, key, content type, metadata, initiation time
    <root>/<upload id>/00001.part       the bytes of part 1 (renamed in whole when received)
    <root>/<upload id>/00001.json       its MD5 and the (inode, size) of the part file it describes

Parts of one upload arrive concurrently (boto3 sends ten at a time); each has its own files, so
they never contend. Completing concatenates the parts into one ObjectStore write, so the object
appears whole or not at all. The object's ETag is then the store's (an MD5 of the whole content
for LocalObjectStore), not S3's MD5-of-MD5s with a part count; clients treat ETags as opaque.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from salvia.api.s3_xml import S3Error
from salvia.jsonfile import read_json, write_json
from salvia.store.objects import utc_from_timestamp

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10_000
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    content_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    initiated: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Part:
    number: int
    etag: str  # unquoted hex MD5 of the part
    size: int
    last_modified: datetime
    path: Path


class MultipartUploads:
    """The uploads in progress under `root`; safe to use from many threads at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def create(self, bucket: str, key: str, content_type: str, metadata: dict[str, str]) -> Upload:
        upload = Upload(uuid.uuid4().hex, bucket, key, content_type, metadata)
        directory = self.root / upload.upload_id
        directory.mkdir()
        record = {
            "bucket": bucket,
            "key": key,
            "content_type": content_type,
            "metadata": metadata,
            "initiated": upload.initiated.isoformat(),
        }
        write_json(directory / "upload.json", record)
        return upload

    def get(self, upload_id: str, bucket: str, key: str) -> Upload:
        """The upload, which must be for this bucket and key; NoSuchUpload otherwise."""
        record = None
        if _UPLOAD_ID.fullmatch(upload_id):
            record = read_json(self.root / upload_id / "upload.json")
        if record is None or (record["bucket"], record["key"]) != (bucket, key):
            raise S3Error(
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may be invalid, or the "
                "upload may have been aborted or completed.",
                f"/{bucket}/{key}",
                UploadId=upload_id,
            )
        return Upload(
            upload_id,
            bucket,
            key,
            record["content_type"],
            record["metadata"],
            datetime.fromisoformat(record["initiated"]),
        )

    def put_part(self, upload: Upload, number: int, body: Path, md5_hex: str) -> Part:
        """Take ownership of `body` (a file on the same file system) as part `number`."""
        directory = self.root / upload.upload_id
        part_path = directory / f"{number:05d}.part"
        try:
            os.replace(body, part_path)
        except FileNotFoundError:
            # aborted or completed while the part was arriving
            raise S3Error("NoSuchUpload", "The upload was aborted or completed meanwhile") from None
        st = part_path.stat()
        record = {"etag": md5_hex, "stamp": [st.st_ino, st.st_size]}
        try:
            write_json(directory / f"{number:05d}.json", record)
        except FileNotFoundError:
            raise S3Error("NoSuchUpload", "The upload was aborted or completed meanwhile") from None
        return Part(number, md5_hex, st.st_size, utc_from_timestamp(st.st_mtime), part_path)

    def parts(self, upload: Upload) -> list[Part]:
        directory = self.root / upload.upload_id
        found = []
        for record_path in sorted(directory.glob("[0-9][0-9][0-9][0-9][0-9].json")):
            part_path = record_path.with_suffix(".part")
            record = read_json(record_path)
            try:
                st = part_path.stat()
            except FileNotFoundError:
                continue
            if record is None or record["stamp"] != [st.st_ino, st.st_size]:
                continue  # the part is being replaced right now
            number = int(record_path.stem)
            found.append(
                Part(number, record["etag"], st.st_size, utc_from_timestamp(st.st_mtime), part_path)
            )
        return found

    def choose_parts(self, upload: Upload, requested: Sequence[tuple[int, str]]) -> list[Part]:
        """The parts that CompleteMultipartUpload names, checked as S3 checks them."""
        if not requested:
            raise S3Error("MalformedXML", "CompleteMultipartUpload must name at least one part")
        numbers = [number for number, _ in requested]
        if numbers != sorted(set(numbers)):
            raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order")
        have = {part.number: part for part in self.parts(upload)}
        chosen = []
        for number, etag in requested:
            part = have.get(number)
            if part is None or part.etag != etag.strip().strip('"'):
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found or its ETag did not "
                    "match",
                    PartNumber=str(number),
                    ETag=etag,
                )
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise S3Error(
                    "EntityTooSmall",
                    f"Part {part.number} is {part.size} bytes; every part but the last must be "
                    f"at least {MIN_PART_SIZE} bytes",
                )
        return chosen

    def claim(self, upload: Upload) -> Path:
        """Take the upload out of the open set (so a second Complete or an Abort finds nothing)
        and return the directory that now holds its parts."""
        claimed = self.root / f"{upload.upload_id}.completing-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.root / upload.upload_id, claimed)
        except FileNotFoundError:
            raise S3Error("NoSuchUpload", "The upload was aborted or completed meanwhile") from None
        return claimed

    def release(self, upload: Upload, claimed: Path) -> None:
        """Put a claimed upload back after a failed completion, so that it can be retried."""
        os.rename(claimed, self.root / upload.upload_id)

    def abort(self, upload: Upload) -> None:
        shutil.rmtree(self.claim(upload), ignore_errors=True)

    @staticmethod
    def discard(claimed: Path) -> None:
        shutil.rmtree(claimed, ignore_errors=True)


class ConcatenatedParts:
    """A readable stream over several part files, one after another."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = list(paths)
        self._current: Any = None

    def read(self, size: int = -1) -> bytes:
        while True:
            if self._current is None:
                if not self._paths:
                    return b""
                self._current = self._paths.pop(0).open("rb")
            data = self._current.read(size)
            if data:
                return bytes(data)
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
