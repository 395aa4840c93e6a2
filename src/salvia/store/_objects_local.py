"""LocalObjectStore: buckets as directories, keys as (nested) files.

Layout under `root`:

    <bucket>/<key>                    the object's bytes; `a/b/c` is the file a/b/c, so a job can
                                      read a prefix as a plain directory
    .salvia-meta/<bucket>/<key>       JSON sidecar: etag, content type, user metadata, and the
                                      (inode, mtime, size) of the data file it describes
    .salvia-meta/<bucket>/.salvia-bucket  the bucket's creation time
    .salvia-tmp/                      writes in progress, renamed into place when complete

A sidecar counts only while it matches its data file's (inode, mtime, size); otherwise (a file
copied in by hand, a crash between the two renames) the ETag is recomputed from the bytes and the
sidecar rewritten. A file system cannot hold both `a` and `a/b`, nor keys with empty, `.` or
`..` segments; such keys raise InvalidObjectName rather than being silently renamed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from salvia.jsonfile import read_json, write_json
from salvia.store.objects import (
    DEFAULT_CONTENT_TYPE,
    BucketAlreadyExists,
    BucketInfo,
    BucketNotEmpty,
    ByteRange,
    InvalidBucketName,
    InvalidObjectName,
    NoSuchBucket,
    NoSuchKey,
    ObjectInfo,
    ObjectListing,
    ObjectReader,
    ObjectStore,
    _Readable,
    copy_and_hash,
    file_md5,
    open_file_range,
    parse_url,
    utc_from_timestamp,
    validate_bucket_name,
)

_RESERVED = ".salvia-"
_META_DIR = ".salvia-meta"
_TMP_DIR = ".salvia-tmp"
_BUCKET_FILE = ".salvia-bucket"
_NAME_MAX = 255


class LocalObjectStore(ObjectStore):
    """Objects in a local directory. Writers in one process are serialized only for the instant
    of their renames; the bytes are written beforehand, in parallel."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self._meta_root = self.root / _META_DIR
        self._tmp_root = self.root / _TMP_DIR
        self._meta_root.mkdir(parents=True, exist_ok=True)
        self._tmp_root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- buckets --------------------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        validate_bucket_name(bucket)
        with self._lock:
            try:
                (self.root / bucket).mkdir()
            except FileExistsError:
                raise BucketAlreadyExists(bucket) from None
            meta_dir = self._meta_root / bucket
            shutil.rmtree(meta_dir, ignore_errors=True)  # leftovers of a bucket removed by hand
            meta_dir.mkdir(parents=True)
            created = datetime.now(UTC).isoformat()
            write_json(meta_dir / _BUCKET_FILE, {"created": created}, self._tmp_root)

    def delete_bucket(self, bucket: str) -> None:
        with self._lock:
            bucket_dir = self._bucket_dir(bucket)
            for _, _, files in os.walk(bucket_dir):
                if files:
                    raise BucketNotEmpty(bucket)
            shutil.rmtree(bucket_dir)
            shutil.rmtree(self._meta_root / bucket, ignore_errors=True)

    def bucket_exists(self, bucket: str) -> bool:
        try:
            self._bucket_dir(bucket)
        except NoSuchBucket:
            return False
        return True

    def list_buckets(self) -> list[BucketInfo]:
        buckets = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                validate_bucket_name(entry.name)
            except InvalidBucketName:
                continue  # a directory made by hand that S3 could not name
            record = read_json(self._meta_root / entry.name / _BUCKET_FILE)
            if record:
                created = datetime.fromisoformat(record["created"])
            else:
                created = utc_from_timestamp(entry.stat().st_mtime)
            buckets.append(BucketInfo(entry.name, created))
        return buckets

    # -- objects --------------------------------------------------------------------------
    def local_path(self, url: str) -> Path | None:
        bucket, key = parse_url(url)
        if not bucket:
            return Path(key)
        validate_bucket_name(bucket)
        parts = key.rstrip("/").split("/") if key.rstrip("/") else []
        _check_parts(key, parts)
        return self.root.joinpath(bucket, *parts)

    def _put(
        self, bucket: str, key: str, stream: _Readable, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._paths(bucket, key)  # refuse a bad key before reading the stream
        self._bucket_dir(bucket)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp_root)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _, etag = copy_and_hash(stream, out)
                out.flush()
                os.fsync(out.fileno())
            return self._commit(bucket, key, tmp, etag, content_type, metadata)
        finally:
            tmp.unlink(missing_ok=True)

    def _commit(
        self,
        bucket: str,
        key: str,
        tmp: Path,
        etag: str,
        content_type: str,
        metadata: dict[str, str],
    ) -> ObjectInfo:
        data_path, meta_path = self._paths(bucket, key)
        with self._lock:
            self._bucket_dir(bucket)  # it may have been deleted while the bytes were written
            try:
                data_path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, data_path)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise InvalidObjectName(
                    f"Key {key!r} cannot be stored next to an existing key that is a prefix of "
                    f"it, or a prefix of existing keys, in a local object store"
                ) from None
            st = data_path.stat()
            record = {
                "etag": etag,
                "content_type": content_type,
                "metadata": metadata,
                "stamp": _stamp(st),
            }
            self._write_sidecar(meta_path, record)
        return _info(bucket, key, st, record)

    def _open(self, bucket: str, key: str, byte_range: ByteRange | None) -> ObjectReader:
        data_path, meta_path = self._paths(bucket, key)
        with self._lock:
            try:
                fh = data_path.open("rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                self._bucket_dir(bucket)
                raise NoSuchKey(f"s3://{bucket}/{key}") from None
            st = os.fstat(fh.fileno())
            record = read_json(meta_path)
        try:
            if record is None or record.get("stamp") != _stamp(st):
                record = self._adopt(data_path, meta_path, fh, st)
            return open_file_range(fh, _info(bucket, key, st, record), byte_range)
        except BaseException:
            fh.close()
            raise

    def _delete(self, bucket: str, key: str) -> None:
        data_path, meta_path = self._paths(bucket, key)
        with self._lock:
            bucket_dir = self._bucket_dir(bucket)
            if data_path.is_file():
                data_path.unlink()
            if meta_path.is_file():
                meta_path.unlink()
            _prune(data_path.parent, bucket_dir)
            _prune(meta_path.parent, self._meta_root / bucket)

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        limit: int = 1000,
    ) -> ObjectListing:
        bucket_dir = self._bucket_dir(bucket)
        after = start_after or ""
        entries = self._walk(bucket_dir, "", prefix, after, delimiter == "/")
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last: str | None = None
        for name, is_prefix in _roll_up(entries, prefix, delimiter, after):
            if len(objects) + len(prefixes) >= limit:
                return ObjectListing(objects, prefixes, limit > 0, last)
            if is_prefix:
                prefixes.append(name)
            else:
                try:
                    objects.append(self._info(bucket, name))
                except NoSuchKey:
                    continue  # deleted since the directory was read
            last = name
        return ObjectListing(objects, prefixes, False, None)

    # -- helpers --------------------------------------------------------------------------
    def _walk(
        self, directory: Path, base: str, prefix: str, after: str, slash_roll_up: bool
    ) -> Iterator[tuple[str, bool]]:
        """(key, False) for each file, (common prefix, True) for each directory that a "/"
        delimiter rolls up whole; in key order, skipping what cannot match `prefix`/`after`."""
        try:
            scanned = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        named = []
        for entry in scanned:
            if entry.name.startswith(_RESERVED):
                continue
            is_dir = entry.is_dir()
            # Sorting "name/" for directories puts "a-b" before "a/x", as S3's key order does.
            named.append((base + entry.name + ("/" if is_dir else ""), entry, is_dir))
        named.sort(key=lambda item: item[0])
        for full, entry, is_dir in named:
            if not is_dir:
                if full.startswith(prefix) and full > after and entry.is_file():
                    yield full, False
                continue
            if not (full.startswith(prefix) or prefix.startswith(full)):
                continue
            if full < after and not after.startswith(full):
                continue  # every key below sorts before `after`
            if slash_roll_up and full.startswith(prefix) and len(full) > len(prefix):
                if full > after and _has_files(Path(entry.path)):
                    yield full, True
                continue
            yield from self._walk(Path(entry.path), full, prefix, after, slash_roll_up)

    def _bucket_dir(self, bucket: str) -> Path:
        try:
            validate_bucket_name(bucket)
        except InvalidBucketName:
            raise NoSuchBucket(bucket) from None
        bucket_dir = self.root / bucket
        if not bucket_dir.is_dir():
            raise NoSuchBucket(bucket)
        return bucket_dir

    def _check_key(self, bucket: str, key: str) -> None:
        _check_parts(key, key.split("/"))

    def _paths(self, bucket: str, key: str) -> tuple[Path, Path]:
        parts = key.split("/")
        _check_parts(key, parts)
        return self.root.joinpath(bucket, *parts), self._meta_root.joinpath(bucket, *parts)

    def _adopt(
        self, data_path: Path, meta_path: Path, fh: Any, st: os.stat_result
    ) -> dict[str, Any]:
        """A data file without a valid sidecar: hash it, and record it if it is still there."""
        record = read_json(meta_path) or {}
        record = {
            "etag": file_md5(fh),
            "content_type": record.get("content_type", DEFAULT_CONTENT_TYPE),
            "metadata": record.get("metadata", {}),
            "stamp": _stamp(st),
        }
        with self._lock:
            try:
                current = data_path.stat()
            except OSError:
                return record
            if _stamp(current) == record["stamp"]:
                self._write_sidecar(meta_path, record)
        return record

    def _write_sidecar(self, meta_path: Path, record: dict[str, Any]) -> None:
        # The meta tree mirrors the data tree, whose shape was just checked; anything in the way
        # here is a stale sidecar of an object that no longer exists.
        for relative in reversed(meta_path.relative_to(self._meta_root).parents):
            parent = self._meta_root / relative
            if parent.is_file():
                parent.unlink()
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        if meta_path.is_dir():
            shutil.rmtree(meta_path)
        write_json(meta_path, record, self._tmp_root)


def _check_parts(key: str, parts: list[str]) -> None:
    for part in parts:
        if part in ("", ".", "..") or part.startswith(_RESERVED) or "\x00" in part:
            raise InvalidObjectName(
                f"Key {key!r} cannot be stored in a local object store: segments between '/' "
                f"must be non-empty, not '.' or '..', and not start with {_RESERVED!r}"
            )
        if len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise InvalidObjectName(
                f"Key {key!r} has a segment longer than {_NAME_MAX} bytes, which a local "
                f"file system cannot name"
            )


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def _info(bucket: str, key: str, st: os.stat_result, record: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=st.st_size,
        etag=record["etag"],
        last_modified=utc_from_timestamp(st.st_mtime),
        content_type=record.get("content_type") or DEFAULT_CONTENT_TYPE,
        metadata=dict(record.get("metadata") or {}),
    )


def _roll_up(
    entries: Iterator[tuple[str, bool]], prefix: str, delimiter: str | None, after: str
) -> Iterator[tuple[str, bool]]:
    """Apply a delimiter other than "/" (which `_walk` already rolled up by directory)."""
    previous = None
    for name, is_prefix in entries:
        if delimiter and not is_prefix:
            rest = name[len(prefix) :]
            cut = rest.find(delimiter)
            if cut >= 0:
                common = prefix + rest[: cut + len(delimiter)]
                if common <= after or common == previous:
                    continue
                previous = common
                yield common, True
                continue
        yield name, is_prefix


def _has_files(directory: Path) -> bool:
    return any(files for _, _, files in os.walk(directory))


def _prune(directory: Path, stop: Path) -> None:
    """Remove empty directories from `directory` up to (not including) `stop`."""
    while directory != stop and stop in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent
