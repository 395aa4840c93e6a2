"""The object store: S3-shaped buckets and keys, kept in a local directory or in any S3 endpoint.

Objects are addressed by URL, `s3://bucket/key`; `file:///abs/path` is accepted wherever a single
object is read or written (open, info, put, copy, delete, local_path) and names a plain local file.

    ObjectStore                 the interface (this module)
    ├── LocalObjectStore        s3://bucket/key -> <root>/bucket/key   (salvia.store._objects_local)
    └── S3ObjectStore           any S3-compatible endpoint, over s3fs  (salvia.store._objects_s3)

Errors (all `SalviaError`s whose `code` is S3's own error code, so the S3 protocol answers with
it unchanged; the SageMaker control plane rewords them where it meets them):

    ObjectStoreError
    ├── NoSuchBucket            404
    ├── NoSuchKey               404
    ├── BucketNotEmpty          409
    ├── BucketAlreadyExists     409 (code BucketAlreadyOwnedByYou: Salvia has one owner)
    ├── InvalidRange            416
    ├── InvalidBucketName       400
    └── InvalidObjectName       400 (code InvalidArgument / KeyTooLongError)
"""

from __future__ import annotations

import abc
import hashlib
import io
import mimetypes
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from salvia.errors import SalviaError

if TYPE_CHECKING:
    from salvia.config import Settings
    from salvia.store._objects_local import LocalObjectStore
    from salvia.store._objects_s3 import S3ObjectStore

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "BucketAlreadyExists",
    "BucketInfo",
    "BucketNotEmpty",
    "ByteRange",
    "InvalidBucketName",
    "InvalidObjectName",
    "InvalidRange",
    "LocalObjectStore",
    "NoSuchBucket",
    "NoSuchKey",
    "ObjectInfo",
    "ObjectListing",
    "ObjectReader",
    "ObjectStore",
    "ObjectStoreError",
    "S3ObjectStore",
    "object_store_from_settings",
    "parse_url",
]

# What S3 answers for an object stored without a Content-Type.
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
MAX_KEY_BYTES = 1024
COPY_CHUNK = 1024 * 1024

# S3's rules for new bucket names (the legacy us-east-1 relaxations are not accepted).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")


class ObjectStoreError(SalviaError):
    code = "InternalError"


class NoSuchBucket(ObjectStoreError):
    code = "NoSuchBucket"

    def __init__(self, bucket: str) -> None:
        super().__init__(f"The specified bucket does not exist: {bucket}")
        self.bucket = bucket


class NoSuchKey(ObjectStoreError):
    code = "NoSuchKey"

    def __init__(self, url: str) -> None:
        super().__init__(f"The specified key does not exist: {url}")
        self.url = url


class BucketNotEmpty(ObjectStoreError):
    code = "BucketNotEmpty"

    def __init__(self, bucket: str) -> None:
        super().__init__(f"The bucket you tried to delete is not empty: {bucket}")
        self.bucket = bucket


class BucketAlreadyExists(ObjectStoreError):
    code = "BucketAlreadyOwnedByYou"

    def __init__(self, bucket: str) -> None:
        super().__init__(f"The bucket already exists and is owned by you: {bucket}")
        self.bucket = bucket


class InvalidRange(ObjectStoreError):
    code = "InvalidRange"

    def __init__(self, byte_range: ByteRange, size: int) -> None:
        super().__init__(f"The requested range {byte_range} is not satisfiable (size {size})")
        self.size = size


class InvalidBucketName(ObjectStoreError):
    code = "InvalidBucketName"


class InvalidObjectName(ObjectStoreError):
    code = "InvalidArgument"


@dataclass(frozen=True)
class ObjectInfo:
    """One object as stored. `etag` is opaque and unquoted; it changes whenever the content does."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime  # aware, UTC
    content_type: str = DEFAULT_CONTENT_TYPE
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else f"file://{self.key}"


@dataclass(frozen=True)
class BucketInfo:
    name: str
    created: datetime  # aware, UTC


@dataclass(frozen=True)
class ObjectListing:
    """One page of a listing: `objects` and `common_prefixes` each in lexicographic order.

    Together they hold at most `limit` entries. When `is_truncated`, passing `next_start_after`
    as `start_after` to the next call continues exactly where this page stopped (a common prefix
    that was returned is not returned again).
    """

    objects: list[ObjectInfo]
    common_prefixes: list[str]
    is_truncated: bool
    next_start_after: str | None


@dataclass(frozen=True)
class ByteRange:
    """One HTTP byte range: `first`-`last` inclusive; `last=None` reads to the end;
    `first=None` means the final `last` bytes (a suffix range)."""

    first: int | None
    last: int | None

    def resolve(self, size: int) -> tuple[int, int]:
        """(start, end) with end exclusive, clamped to `size`; raises InvalidRange if empty."""
        if self.first is None:
            suffix = self.last or 0
            if suffix <= 0 or size == 0:
                raise InvalidRange(self, size)
            return max(0, size - suffix), size
        if self.first >= size or (self.last is not None and self.last < self.first):
            raise InvalidRange(self, size)
        end = size if self.last is None else min(self.last + 1, size)
        return self.first, end

    def header(self) -> str:
        first = "" if self.first is None else str(self.first)
        last = "" if self.last is None else str(self.last)
        return f"bytes={first}-{last}"

    def __str__(self) -> str:
        return self.header()


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ObjectReader:
    """An open object: `info` describes the whole object, the reads yield bytes `start`..`end`.

    The bytes come from the very version that `info` describes, even if the object is replaced
    while it is being read. Close it (or use it as a context manager) to release the handle.
    """

    def __init__(
        self,
        info: ObjectInfo,
        start: int,
        end: int,
        read: Callable[[int], bytes],
        close: Callable[[], None],
    ) -> None:
        self.info = info
        self.start = start
        self.end = end
        self._remaining = end - start
        self._read = read
        self._close = close
        self.closed = False

    @property
    def length(self) -> int:
        return self.end - self.start

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        want = self._remaining if size < 0 else min(size, self._remaining)
        chunks = []
        while want > 0:
            chunk = self._read(want)
            if not chunk:
                raise OSError(f"{self.info.url}: object ended {self._remaining} bytes early")
            chunks.append(chunk)
            want -= len(chunk)
            self._remaining -= len(chunk)
            if size >= 0:
                break  # one short read is fine, like io.RawIOBase
        return b"".join(chunks)

    def iter_chunks(self, chunk_size: int = COPY_CHUNK) -> Iterator[bytes]:
        while chunk := self.read(chunk_size):
            yield chunk

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); `file:///abs/path` -> ("", "/abs/path").

    An s3 URL holds the key verbatim (`?`, `#` and `%` included), as the AWS CLI and s3fs take
    it; a file URL is percent-encoded, as `Path.as_uri()` writes it.
    """
    if url.startswith("s3://"):
        bucket, _, key = url[len("s3://") :].partition("/")
        if not bucket:
            raise InvalidObjectName(f"URL {url!r} names no bucket")
        return bucket, key
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidObjectName(f"file URL must be file:///absolute/path, got {url!r}")
        return "", unquote(parts.path)
    raise InvalidObjectName(f"object URL must start with s3:// or file://, got {url!r}")


def validate_bucket_name(bucket: str) -> None:
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket or _IP_ADDRESS.fullmatch(bucket):
        raise InvalidBucketName(
            f"Bucket name must be 3-63 characters of lowercase letters, digits, '.' and '-', "
            f"starting and ending with a letter or digit, got {bucket!r}"
        )


def validate_key(key: str) -> None:
    if not key:
        raise InvalidObjectName("Object key must not be empty")
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        error = InvalidObjectName(f"Object key is longer than {MAX_KEY_BYTES} bytes")
        error.code = "KeyTooLongError"
        raise error


class ObjectStore(abc.ABC):
    """Buckets of objects, addressed as `s3://bucket/key`.

    Contract, which every implementation passes in `tests/store/test_object_store.py`:
    - Thread-safe: one instance is shared by all of the server's threads.
    - Writes (`put_*`, `copy`) are atomic: a reader sees the old object or the new one, never a
      part of either, and an interrupted write leaves the old object in place. Concurrent writers
      of one key: the last to finish wins. A write into a missing bucket raises NoSuchBucket.
    - `delete` of a missing key succeeds (as S3's DeleteObject does); of a missing bucket raises.
    - Listings are in lexicographic (UTF-8 byte) order of key.
    - `content_type` defaults to `DEFAULT_CONTENT_TYPE` (`put_file` guesses it from the file name
      first); `metadata` is the user metadata (S3's x-amz-meta-*), names lower-case.
    """

    # -- buckets ----------------------------------------------------------------------------
    @abc.abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Raises BucketAlreadyExists, InvalidBucketName."""

    @abc.abstractmethod
    def delete_bucket(self, bucket: str) -> None:
        """Raises NoSuchBucket, BucketNotEmpty."""

    @abc.abstractmethod
    def bucket_exists(self, bucket: str) -> bool: ...

    @abc.abstractmethod
    def list_buckets(self) -> list[BucketInfo]:
        """All buckets, by name."""

    # -- objects in buckets: what implementations provide -----------------------------------
    @abc.abstractmethod
    def _put(
        self, bucket: str, key: str, stream: _Readable, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo: ...

    @abc.abstractmethod
    def _open(self, bucket: str, key: str, byte_range: ByteRange | None) -> ObjectReader: ...

    @abc.abstractmethod
    def _delete(self, bucket: str, key: str) -> None: ...

    @abc.abstractmethod
    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        limit: int = 1000,
    ) -> ObjectListing:
        """At most `limit` keys and common prefixes after `start_after`, starting with `prefix`.

        With a `delimiter`, keys whose remainder after `prefix` contains it are rolled up into
        one common prefix (`prefix` + remainder up to and including the delimiter). Raises
        NoSuchBucket.
        """

    # -- what implementations may do better than these defaults -----------------------------
    def _info(self, bucket: str, key: str) -> ObjectInfo:
        with self._open(bucket, key, None) as reader:
            return reader.info

    def _copy(
        self,
        src: tuple[str, str],
        dst: tuple[str, str],
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> ObjectInfo:
        """Copy within the store; `content_type` and `metadata` are both None (keep the
        source's) or both given (replace them)."""
        self._check_key(*dst)
        with self._open(*src, None) as reader:
            if content_type is None or metadata is None:
                content_type, metadata = reader.info.content_type, dict(reader.info.metadata)
            return self._put(dst[0], dst[1], reader, content_type, metadata)

    def _check_key(self, bucket: str, key: str) -> None:  # noqa: B027 - S3 holds any key
        """Raise InvalidObjectName for a key this store cannot hold (beyond S3's own rules)."""

    def _put_file(
        self, bucket: str, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        with path.open("rb") as fh:
            return self._put(bucket, key, fh, content_type, metadata)

    def check_url(self, url: str) -> None:
        """Raise InvalidObjectName (or InvalidBucketName) now for a URL that a write would
        refuse later, e.g. before accepting a multipart upload."""
        bucket, key = self._parse(url)
        if bucket:
            validate_bucket_name(bucket)
            self._check_key(bucket, key)

    def local_path(self, url: str) -> Path | None:
        """Where the object lives on this machine's file system, or None if it does not."""
        bucket, key = parse_url(url)
        return Path(key) if not bucket else None

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections; the store is not used afterwards."""

    # -- the public verbs, shared by every implementation -----------------------------------
    def put_bytes(
        self,
        url: str,
        data: bytes,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        return self.put_stream(url, io.BytesIO(data), content_type, metadata)

    def put_stream(
        self,
        url: str,
        stream: IO[bytes] | _Readable,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Store everything `stream` yields until EOF; the stream is read once, not closed."""
        bucket, key = self._parse(url)
        if not bucket:
            return _put_local_file(Path(key), stream)
        return self._put(bucket, key, stream, content_type or DEFAULT_CONTENT_TYPE, _meta(metadata))

    def put_file(
        self,
        url: str,
        path: str | os.PathLike[str],
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        path = Path(path)
        content_type = content_type or mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
        bucket, key = self._parse(url)
        if not bucket:
            with path.open("rb") as fh:
                return _put_local_file(Path(key), fh)
        return self._put_file(bucket, key, path, content_type, _meta(metadata))

    def open(self, url: str, byte_range: ByteRange | None = None) -> ObjectReader:
        """Open for reading, all of it or one byte range. Raises NoSuchKey, NoSuchBucket,
        InvalidRange."""
        bucket, key = self._parse(url)
        if not bucket:
            return _open_local_file(Path(key), byte_range)
        return self._open(bucket, key, byte_range)

    def read_bytes(self, url: str) -> bytes:
        with self.open(url) as reader:
            return reader.read()

    def info(self, url: str) -> ObjectInfo:
        bucket, key = self._parse(url)
        if not bucket:
            with _open_local_file(Path(key), None) as reader:
                return reader.info
        return self._info(bucket, key)

    def exists(self, url: str) -> bool:
        try:
            self.info(url)
        except (NoSuchKey, NoSuchBucket):
            return False
        return True

    def delete(self, url: str) -> None:
        bucket, key = self._parse(url)
        if not bucket:
            Path(key).unlink(missing_ok=True)
            return
        self._delete(bucket, key)

    def copy(
        self,
        src_url: str,
        dst_url: str,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Copy one object. The copy keeps the source's content type and metadata unless
        `content_type` or `metadata` is given (then both are replaced, as S3's REPLACE does)."""
        src, dst = self._parse(src_url), self._parse(dst_url)
        replace = content_type is not None or metadata is not None
        if src[0] and dst[0]:
            new_type = (content_type or DEFAULT_CONTENT_TYPE) if replace else None
            return self._copy(src, dst, new_type, _meta(metadata) if replace else None)
        with self.open(src_url) as reader:
            if not replace:
                content_type, metadata = reader.info.content_type, reader.info.metadata
            return self.put_stream(dst_url, reader, content_type, metadata)

    def _parse(self, url: str) -> tuple[str, str]:
        bucket, key = parse_url(url)
        if bucket:
            validate_key(key)
        return bucket, key


def _meta(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {name.lower(): value for name, value in (metadata or {}).items()}


def copy_and_hash(stream: _Readable, out: IO[bytes]) -> tuple[int, str]:
    """Copy `stream` to `out`; return (size, hex MD5)."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    while chunk := stream.read(COPY_CHUNK):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def file_md5(fh: IO[bytes]) -> str:
    fh.seek(0)
    digest = hashlib.md5(usedforsecurity=False)
    while chunk := fh.read(COPY_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def utc_from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _put_local_file(path: Path, stream: _Readable) -> ObjectInfo:
    """Atomically replace a plain local file (a file:// URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".salvia-tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            size, etag = copy_and_hash(stream, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    mtime = utc_from_timestamp(path.stat().st_mtime)
    return ObjectInfo("", str(path), size, etag, mtime, DEFAULT_CONTENT_TYPE, {})


def open_file_range(fh: IO[bytes], info: ObjectInfo, byte_range: ByteRange | None) -> ObjectReader:
    start, end = (0, info.size) if byte_range is None else byte_range.resolve(info.size)
    fh.seek(start)
    return ObjectReader(info, start, end, fh.read, fh.close)


def _open_local_file(path: Path, byte_range: ByteRange | None) -> ObjectReader:
    try:
        fh = path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NoSuchKey(path.as_uri()) from None
    try:
        st = os.fstat(fh.fileno())
        info = ObjectInfo("", str(path), st.st_size, file_md5(fh), utc_from_timestamp(st.st_mtime))
        return open_file_range(fh, info, byte_range)
    except BaseException:
        fh.close()
        raise


def object_store_from_settings(settings: Settings) -> ObjectStore:
    """An S3ObjectStore when `s3_endpoint_url` is set, else a LocalObjectStore in `objects_dir`."""
    if settings.s3_endpoint_url:
        from salvia.store._objects_s3 import S3ObjectStore  # s3fs is an optional extra

        return S3ObjectStore(
            settings.s3_endpoint_url,
            settings.s3_access_key_id,
            settings.s3_secret_access_key,
            settings.region,
        )
    from salvia.store._objects_local import LocalObjectStore

    return LocalObjectStore(settings.objects_dir)


def __getattr__(name: str) -> Any:
    # The implementations live in private modules, importable from here without loading s3fs
    # until S3ObjectStore is asked for.
    if name == "LocalObjectStore":
        from salvia.store._objects_local import LocalObjectStore

        return LocalObjectStore
    if name == "S3ObjectStore":
        from salvia.store._objects_s3 import S3ObjectStore

        return S3ObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
