"""S3ObjectStore: any S3-compatible endpoint (AWS, MinIO, Ceph, moto), through s3fs.

S3 itself gives the contract's atomicity (a PUT or a completed multipart upload replaces the
object whole). Calls go through s3fs's `call_s3`, which shares one aiobotocore client and event
loop across threads; s3fs turns botocore's ClientError into OSError subclasses and keeps the
original as `__cause__`, from which the S3 error code is read back here.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from fsspec.asyn import sync

from salvia.store.objects import (
    DEFAULT_CONTENT_TYPE,
    BucketAlreadyExists,
    BucketInfo,
    BucketNotEmpty,
    ByteRange,
    InvalidBucketName,
    InvalidRange,
    NoSuchBucket,
    NoSuchKey,
    ObjectInfo,
    ObjectListing,
    ObjectReader,
    ObjectStore,
    _Readable,
    validate_bucket_name,
)

# Objects up to this size go up in one PutObject from memory; larger ones through s3fs's
# multipart upload of a local file.
_SINGLE_PUT_MAX = 16 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_PAGE = 1000


class S3ObjectStore(ObjectStore):
    """Objects in an S3-compatible service, addressed path-style at `endpoint_url`."""

    def __init__(
        self,
        endpoint_url: str,
        access_key_id: str = "",
        secret_access_key: str = "",
        region: str = "us-east-1",
    ) -> None:
        import s3fs  # an optional extra: loaded only when an S3 endpoint is configured

        self.endpoint_url = endpoint_url
        self.region = region
        self._fs = s3fs.S3FileSystem(
            endpoint_url=endpoint_url or None,
            key=access_key_id or None,
            secret=secret_access_key or None,
            client_kwargs={"region_name": region},
            config_kwargs={"s3": {"addressing_style": "path"}},
            skip_instance_cache=True,
            use_listings_cache=False,
        )

    def close(self) -> None:
        creator = getattr(self._fs, "_s3creator", None)
        if creator is not None:
            sync(self._fs.loop, creator.__aexit__, None, None, None)
            self._fs._s3creator = None
            self._fs._s3 = None

    # -- buckets --------------------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        validate_bucket_name(bucket)
        # us-east-1 answers 200 to re-creating one's own bucket; the contract says it raises.
        if self.bucket_exists(bucket):
            raise BucketAlreadyExists(bucket)
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self._call("create_bucket", **kwargs)

    def delete_bucket(self, bucket: str) -> None:
        self._call("delete_bucket", Bucket=bucket)

    def bucket_exists(self, bucket: str) -> bool:
        try:
            validate_bucket_name(bucket)
            self._call("head_bucket", Bucket=bucket)
        except (NoSuchBucket, InvalidBucketName):
            return False
        return True

    def list_buckets(self) -> list[BucketInfo]:
        response = self._call("list_buckets")
        buckets = [BucketInfo(b["Name"], b["CreationDate"]) for b in response.get("Buckets", [])]
        return sorted(buckets, key=lambda b: b.name)

    # -- objects --------------------------------------------------------------------------
    def _put(
        self, bucket: str, key: str, stream: _Readable, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        head = _read_up_to(stream, _SINGLE_PUT_MAX + 1)
        if len(head) <= _SINGLE_PUT_MAX:
            return self._put_object(bucket, key, head, content_type, metadata)
        fd, tmp = tempfile.mkstemp(prefix="salvia-s3-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                while chunk := stream.read(1024 * 1024):
                    out.write(chunk)
            return self._put_file(bucket, key, Path(tmp), content_type, metadata)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _put_file(
        self, bucket: str, key: str, path: Path, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        if path.stat().st_size <= _SINGLE_PUT_MAX:
            return self._put_object(bucket, key, path.read_bytes(), content_type, metadata)
        try:
            self._fs.put_file(
                str(path), f"{bucket}/{key}", ContentType=content_type, Metadata=metadata
            )
        except Exception as exc:
            raise _translate(exc, bucket, key) from exc
        return self._info(bucket, key)

    def _put_object(
        self, bucket: str, key: str, data: bytes, content_type: str, metadata: dict[str, str]
    ) -> ObjectInfo:
        self._call(
            "put_object",
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            Metadata=metadata,
        )
        return self._info(bucket, key)

    def _open(self, bucket: str, key: str, byte_range: ByteRange | None) -> ObjectReader:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if byte_range is not None:
            kwargs["Range"] = byte_range.header()
        try:
            response = self._call("get_object", **kwargs)
        except InvalidRange:
            size = self._info(bucket, key).size
            raise InvalidRange(byte_range or ByteRange(0, None), size) from None
        body = response["Body"]
        length = response["ContentLength"]
        match = _CONTENT_RANGE.fullmatch(response.get("ContentRange") or "")
        if match:
            start, size = int(match[1]), int(match[3])
        else:
            start, size = 0, length
        info = _info_from(bucket, key, response, size)
        loop = self._fs.loop

        def read(n: int) -> bytes:
            data: bytes = sync(loop, body.read, n)
            return data

        def close() -> None:
            result = body.close()
            if inspect.isawaitable(result):
                sync(loop, _wait, result)

        return ObjectReader(info, start, start + length, read, close)

    def _info(self, bucket: str, key: str) -> ObjectInfo:
        try:
            response = self._call("head_object", Bucket=bucket, Key=key)
        except NoSuchKey:
            # HEAD answers a bare 404 for both; tell a missing bucket from a missing key.
            if not self.bucket_exists(bucket):
                raise NoSuchBucket(bucket) from None
            raise
        return _info_from(bucket, key, response, response["ContentLength"])

    def _delete(self, bucket: str, key: str) -> None:
        self._call("delete_object", Bucket=bucket, Key=key)

    def _copy(
        self,
        src: tuple[str, str],
        dst: tuple[str, str],
        content_type: str | None,
        metadata: dict[str, str] | None,
    ) -> ObjectInfo:
        kwargs: dict[str, Any] = {
            "Bucket": dst[0],
            "Key": dst[1],
            "CopySource": {"Bucket": src[0], "Key": src[1]},
        }
        if content_type is not None and metadata is not None:
            kwargs.update(MetadataDirective="REPLACE", ContentType=content_type, Metadata=metadata)
        self._call("copy_object", **kwargs)
        return self._info(*dst)

    def list_objects(
        self,
        bucket: str,
        prefix: str = "",
        delimiter: str | None = None,
        start_after: str | None = None,
        limit: int = 1000,
    ) -> ObjectListing:
        after = start_after or ""
        entries: list[tuple[str, ObjectInfo | None]] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": _PAGE}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if after:
            kwargs["StartAfter"] = after
        # Paged until one entry more than asked for is known. A common prefix equal to `after`
        # (the end of the previous page) is dropped here: S3 would return it again.
        while len(entries) <= limit:
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                info = ObjectInfo(
                    bucket=bucket,
                    key=item["Key"],
                    size=item["Size"],
                    etag=item["ETag"].strip('"'),
                    last_modified=item["LastModified"],
                )
                entries.append((item["Key"], info))
            for item in page.get("CommonPrefixes", []):
                if item["Prefix"] > after:
                    entries.append((item["Prefix"], None))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        entries.sort(key=lambda entry: entry[0])
        page_entries = entries[:limit]
        truncated = len(entries) > limit and limit > 0
        return ObjectListing(
            objects=[info for _, info in page_entries if info is not None],
            common_prefixes=[name for name, info in page_entries if info is None],
            is_truncated=truncated,
            next_start_after=page_entries[-1][0] if truncated else None,
        )

    # -- helpers --------------------------------------------------------------------------
    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return self._fs.call_s3(method, **kwargs)
        except Exception as exc:
            raise _translate(exc, kwargs.get("Bucket", ""), kwargs.get("Key", "")) from exc


def _read_up_to(stream: _Readable, size: int) -> bytes:
    """`size` bytes, or fewer at EOF: a stream's read may return less than asked before then."""
    chunks = []
    while size > 0 and (chunk := stream.read(min(size, 1024 * 1024))):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


async def _wait(awaitable: Any) -> None:
    await awaitable


def _translate(exc: Exception, bucket: str, key: str) -> Exception:
    """The store's error for an s3fs/botocore error, or `exc` itself when none fits."""
    cause: Any = exc if hasattr(exc, "response") else exc.__cause__
    response = getattr(cause, "response", None)
    if not isinstance(response, dict):
        return exc
    code = response.get("Error", {}).get("Code", "")
    if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and not key):
        return NoSuchBucket(bucket)
    if code in ("NoSuchKey", "404", "NotFound"):
        return NoSuchKey(f"s3://{bucket}/{key}")
    if code == "BucketNotEmpty":
        return BucketNotEmpty(bucket)
    if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        return BucketAlreadyExists(bucket)
    if code == "InvalidRange":
        return InvalidRange(ByteRange(0, None), -1)
    if code == "InvalidBucketName":
        return InvalidBucketName(response.get("Error", {}).get("Message", bucket))
    return exc


def _info_from(bucket: str, key: str, response: dict[str, Any], size: int) -> ObjectInfo:
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=size,
        etag=str(response.get("ETag", "")).strip('"'),
        last_modified=response["LastModified"],
        content_type=response.get("ContentType") or DEFAULT_CONTENT_TYPE,
        metadata={name.lower(): value for name, value in response.get("Metadata", {}).items()},
    )
