"""The S3 REST protocol over an ObjectStore, so that `boto3.client("s3", endpoint_url=...)`
works against Salvia's own address.

`S3Protocol` is a plain ASGI application; the server's router hands it every HTTP request that is
not SageMaker's. Buckets are named path-style (`/bucket/key`) or virtual-host style
(`Host: bucket.localhost`). Operations served: ListBuckets; Create/Head/Delete Bucket,
GetBucketLocation; ListObjects (v1 and v2); Put/Get/Head/Delete/Copy Object; DeleteObjects;
Create/UploadPart/Complete/Abort multipart uploads and ListParts. Any other S3 operation answers
501 NotImplemented naming it; none is answered with a fake success.

Request bodies are spooled to `scratch_dir` as they arrive; all file and store I/O runs in worker
threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote_to_bytes

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from salvia.api import s3_xml as xml
from salvia.api.s3_body import ClientDisconnect, parse_range, read_small_body, spool_body
from salvia.api.s3_multipart import MAX_PART_NUMBER, ConcatenatedParts, MultipartUploads, Upload
from salvia.api.s3_request import (
    S3Request,
    check_conditions,
    check_latin1,
    content_type_and_metadata,
    decode_token,
    encode_token,
    object_headers,
)
from salvia.api.s3_xml import S3Error
from salvia.store.objects import (
    DEFAULT_CONTENT_TYPE,
    InvalidObjectName,
    NoSuchKey,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_OBJECT_SIZE = 5 * 1024**3  # S3's limit for one PUT, and for one part
MAX_XML_BODY = 4 * 1024 * 1024
MAX_KEYS = 1000
OWNER_ID = "salvia"
_READ_CHUNK = 1024 * 1024

_LIST_PARAMS = {
    "list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after",
    "encoding-type", "fetch-owner", "marker", "optional-object-attributes",
}  # fmt: skip
_GET_OBJECT_PARAMS = {
    "response-content-type", "response-content-language", "response-expires",
    "response-cache-control", "response-content-disposition", "response-content-encoding",
}  # fmt: skip


class S3Protocol:
    """ASGI application serving the S3 REST API from `object_store`."""

    def __init__(
        self,
        object_store: ObjectStore,
        scratch_dir: Path,
        *,
        region: str = "us-east-1",
        virtual_host_suffixes: tuple[str, ...] = ("localhost",),
        max_object_size: int = MAX_OBJECT_SIZE,
    ) -> None:
        self.store = object_store
        self.region = region
        self.virtual_host_suffixes = virtual_host_suffixes
        self.max_object_size = max_object_size
        self.body_dir = Path(scratch_dir) / "s3-bodies"
        self.body_dir.mkdir(parents=True, exist_ok=True)
        self.uploads = MultipartUploads(Path(scratch_dir) / "s3-multipart")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"S3Protocol serves HTTP only, not {scope['type']!r}")
        request_id = uuid.uuid4().hex[:16].upper()
        method = scope.get("method", "GET")
        resource = scope.get("path", "")
        body_read = False

        async def receive_body() -> Message:
            nonlocal body_read
            message = await receive()
            body_read = body_read or not message.get("more_body", False)
            return message

        try:
            request = S3Request(scope, receive_body, self.virtual_host_suffixes)
            resource = request.resource
            response = await self._dispatch(request)
        except ClientDisconnect:
            return
        except S3Error as error:
            response = _error_response(error, request_id, method)
        except ObjectStoreError as error:
            response = _error_response(S3Error.from_store(error, resource), request_id, method)
        except Exception:
            log.exception("S3 %s %s failed", method, resource)
            failure = S3Error(
                "InternalError", "We encountered an internal error. Please try again."
            )
            response = _error_response(failure, request_id, method)
        response.headers["x-amz-request-id"] = request_id
        response.headers["x-amz-id-2"] = request_id
        if not body_read and _has_body(scope):
            # Answered before the body was read (an error, or `Expect: 100-continue` refused):
            # what the client may still send cannot be told from its next request.
            response.headers["connection"] = "close"
        await response(scope, receive, send)

    async def _dispatch(self, request: S3Request) -> Response:
        if not request.bucket:
            if request.method in ("GET", "HEAD"):
                return await self._list_buckets(request)
            raise S3Error("MethodNotAllowed", "The method is not allowed against this resource")
        if not request.key:
            return await self._bucket_operation(request)
        return await self._object_operation(request)

    # -- service and buckets ---------------------------------------------------------------
    async def _list_buckets(self, request: S3Request) -> Response:
        request.require_only({"max-buckets", "continuation-token", "prefix"}, "ListBuckets")
        buckets = await _thread(self.store.list_buckets)
        prefix = request.query.get("prefix", "")
        after = decode_token(request.query.get("continuation-token", ""))
        chosen = [b for b in buckets if b.name.startswith(prefix) and b.name > after]
        limit = request.int_param("max-buckets", 10_000, 1, 10_000)
        root = xml.document("ListAllMyBucketsResult")
        owner = xml.add(root, "Owner")
        xml.add_all(owner, [("ID", OWNER_ID), ("DisplayName", OWNER_ID)])
        listed = xml.add(root, "Buckets")
        for bucket in chosen[:limit]:
            entry = xml.add(listed, "Bucket")
            xml.add_all(
                entry, [("Name", bucket.name), ("CreationDate", xml.iso_time(bucket.created))]
            )
            xml.add(entry, "BucketRegion", self.region)
        if len(chosen) > limit:
            xml.add(root, "ContinuationToken", encode_token(chosen[limit - 1].name))
        if prefix:
            xml.add(root, "Prefix", prefix)
        return _xml_response(root)

    async def _bucket_operation(self, request: S3Request) -> Response:
        params = request.operation_params()
        method, bucket = request.method, request.bucket
        if method == "GET" and "location" in params:
            await self._require_bucket(bucket)
            root = xml.document("LocationConstraint")
            root.text = "" if self.region == "us-east-1" else self.region
            return _xml_response(root)
        if method == "GET" and "uploads" in params:
            raise request.not_implemented("ListMultipartUploads")
        if method == "GET":
            request.require_only(_LIST_PARAMS, "ListObjects")
            return await self._list_objects(request)
        if method == "POST" and "delete" in params:
            request.require_only({"delete"}, "DeleteObjects")
            return await self._delete_objects(request)
        if params:
            raise request.not_implemented(f"{method} on a bucket with ?{sorted(params)[0]}")
        if method == "HEAD":
            await self._require_bucket(bucket)
            return Response(status_code=200, headers={"x-amz-bucket-region": self.region})
        if method == "PUT":
            body = await read_small_body(request.receive, request.headers, MAX_XML_BODY)
            if body.strip():
                xml.parse_xml(body, "CreateBucketConfiguration")
            await _thread(self.store.create_bucket, bucket)
            return Response(status_code=200, headers={"Location": f"/{bucket}"})
        if method == "DELETE":
            await _thread(self.store.delete_bucket, bucket)
            return Response(status_code=204)
        raise S3Error("MethodNotAllowed", f"{method} is not allowed on a bucket", request.resource)

    async def _require_bucket(self, bucket: str) -> None:
        if not await _thread(self.store.bucket_exists, bucket):
            raise S3Error("NoSuchBucket", "The specified bucket does not exist", f"/{bucket}")

    async def _list_objects(self, request: S3Request) -> Response:
        query = request.query
        v2 = query.get("list-type") == "2"
        if "list-type" in query and not v2:
            raise S3Error("InvalidArgument", "list-type must be 2", request.resource)
        url_encode = query.get("encoding-type") == "url"
        if "encoding-type" in query and not url_encode:
            raise S3Error("InvalidArgument", "encoding-type must be url", request.resource)
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter") or None
        limit = request.int_param("max-keys", MAX_KEYS, 0, None)
        if v2:
            token = query.get("continuation-token")
            start_after = decode_token(token) if token is not None else query.get("start-after")
        else:
            start_after = query.get("marker")
        listing = await _thread(
            self.store.list_objects,
            request.bucket,
            prefix,
            delimiter,
            start_after,
            min(limit, MAX_KEYS),
        )

        def text(value: str) -> str:
            return quote(value, safe="/") if url_encode else value

        root = xml.document("ListBucketResult")
        xml.add_all(root, [("Name", request.bucket), ("Prefix", text(prefix))])
        if v2:
            if "continuation-token" in query:
                xml.add(root, "ContinuationToken", query["continuation-token"])
            if query.get("start-after"):
                xml.add(root, "StartAfter", text(query["start-after"]))
            xml.add(root, "KeyCount", len(listing.objects) + len(listing.common_prefixes))
        else:
            xml.add(root, "Marker", text(start_after or ""))
        xml.add(root, "MaxKeys", limit)
        if delimiter:
            xml.add(root, "Delimiter", text(delimiter))
        if url_encode:
            xml.add(root, "EncodingType", "url")
        xml.add(root, "IsTruncated", listing.is_truncated)
        if listing.is_truncated and listing.next_start_after is not None:
            if v2:
                xml.add(root, "NextContinuationToken", encode_token(listing.next_start_after))
            else:
                xml.add(root, "NextMarker", text(listing.next_start_after))
        for info in listing.objects:
            entry = xml.add(root, "Contents")
            xml.add_all(
                entry,
                [
                    ("Key", text(info.key)),
                    ("LastModified", xml.iso_time(info.last_modified)),
                    ("ETag", f'"{info.etag}"'),
                    ("Size", info.size),
                    ("StorageClass", "STANDARD"),
                ],
            )
            if not v2 or query.get("fetch-owner") == "true":
                owner = xml.add(entry, "Owner")
                xml.add_all(owner, [("ID", OWNER_ID), ("DisplayName", OWNER_ID)])
        for common in listing.common_prefixes:
            xml.add(xml.add(root, "CommonPrefixes"), "Prefix", text(common))
        return _xml_response(root)

    async def _delete_objects(self, request: S3Request) -> Response:
        body = await read_small_body(request.receive, request.headers, MAX_XML_BODY)
        document = xml.parse_xml(body, "Delete")
        quiet = (xml.child_text(document, "Quiet") or "").strip().lower() == "true"
        keys = [xml.child_text(obj, "Key") for obj in document.findall("Object")]
        if not keys or len(keys) > 1000:
            raise S3Error("MalformedXML", "Delete must name between 1 and 1000 objects")
        await self._require_bucket(request.bucket)
        root = xml.document("DeleteResult")
        for key in keys:
            try:
                if not key:
                    raise S3Error("InvalidArgument", "An object key must not be empty")
                await self._delete_quietly(f"s3://{request.bucket}/{key}")
            except (S3Error, ObjectStoreError) as error:
                failed = xml.add(root, "Error")
                xml.add_all(failed, [("Key", key), ("Code", error.code), ("Message", str(error))])
                continue
            if not quiet:
                xml.add(xml.add(root, "Deleted"), "Key", key)
        return _xml_response(root)

    async def _delete_quietly(self, url: str) -> None:
        # A key the store cannot hold does not exist: deleting it succeeds, as in S3.
        with contextlib.suppress(InvalidObjectName):
            await _thread(self.store.delete, url)

    # -- objects ---------------------------------------------------------------------------
    async def _object_operation(self, request: S3Request) -> Response:
        params = request.operation_params()
        method = request.method
        if "uploadId" in params:
            return await self._multipart_operation(request)
        if method == "POST" and "uploads" in params:
            request.require_only({"uploads"}, "CreateMultipartUpload")
            return await self._create_multipart_upload(request)
        if method in ("GET", "HEAD"):
            if "partNumber" in params:
                raise request.not_implemented(
                    f"{'Get' if method == 'GET' else 'Head'}Object by part"
                )
            request.require_only(_GET_OBJECT_PARAMS | {"versionId"}, "GetObject")
            if request.query.get("versionId", "null") != "null":
                raise request.not_implemented("object versions")
            return await self._get_object(request, head=method == "HEAD")
        if params:
            raise request.not_implemented(f"{method} on an object with ?{sorted(params)[0]}")
        if method == "PUT" and "x-amz-copy-source" in request.headers:
            return await self._copy_object(request)
        if method == "PUT":
            return await self._put_object(request)
        if method == "DELETE":
            await self._require_bucket(request.bucket)
            await self._delete_quietly(request.url)
            return Response(status_code=204)
        raise S3Error("MethodNotAllowed", f"{method} is not allowed on an object", request.resource)

    async def _get_object(self, request: S3Request, *, head: bool) -> Response:
        byte_range = parse_range(request.headers.get("range"))
        try:
            reader = await _thread(self.store.open, request.url, byte_range)
        except InvalidObjectName:
            raise NoSuchKey(request.url) from None
        except ObjectStoreError as error:
            if error.code == "InvalidRange":
                size = getattr(error, "size", 0)
                raise S3Error(
                    error.code,
                    error.message,
                    request.resource,
                    headers={"Content-Range": f"bytes */{size}"},
                    ActualObjectSize=str(size),
                    RangeRequested=request.headers.get("range", ""),
                ) from None
            raise
        try:
            headers = object_headers(reader.info)
            check_conditions(request, reader.info)
            for param in _GET_OBJECT_PARAMS:
                if param in request.query:
                    headers[param[len("response-") :]] = request.query[param]
            headers["Content-Length"] = str(reader.length)
            status = 200
            if byte_range is not None:
                status = 206
                headers["Content-Range"] = (
                    f"bytes {reader.start}-{reader.end - 1}/{reader.info.size}"
                )
            check_latin1(headers)
        except BaseException:
            reader.close()
            raise
        if head:
            reader.close()
            return Response(status_code=status, headers=headers)
        return StreamingResponse(_stream(reader), status_code=status, headers=headers)

    async def _put_object(self, request: S3Request) -> Response:
        content_type, metadata = content_type_and_metadata(request.headers)
        await self._require_bucket(request.bucket)
        body = await spool_body(
            request.receive, request.headers, self.body_dir, self.max_object_size
        )
        try:
            info = await _thread(
                self.store.put_file, request.url, body.path, content_type, metadata
            )
        finally:
            body.discard()
        return Response(status_code=200, headers={"ETag": f'"{info.etag}"'})

    async def _copy_object(self, request: S3Request) -> Response:
        source = request.headers["x-amz-copy-source"]
        source_path = source.split("?", 1)[0]
        try:
            decoded = unquote_to_bytes(source_path).decode("utf-8").lstrip("/")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", "x-amz-copy-source is not valid UTF-8") from None
        src_bucket, _, src_key = decoded.partition("/")
        if not src_bucket or not src_key:
            raise S3Error("InvalidArgument", "x-amz-copy-source must be bucket/key", source)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "x-amz-metadata-directive must be COPY or REPLACE")
        if (src_bucket, src_key) == (request.bucket, request.key) and directive == "COPY":
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself "
                "without changing the object's metadata.",
                request.resource,
            )
        if directive == "REPLACE":
            content_type, metadata = content_type_and_metadata(request.headers)
            replaced: tuple[str | None, dict[str, str] | None] = (
                content_type or DEFAULT_CONTENT_TYPE,
                metadata,
            )
        else:
            replaced = (None, None)
        src_url = f"s3://{src_bucket}/{src_key}"
        try:
            info = await _thread(self.store.copy, src_url, request.url, *replaced)
        except NoSuchKey:
            raise S3Error("NoSuchKey", "The specified key does not exist.", f"/{decoded}") from None
        root = xml.document("CopyObjectResult")
        xml.add_all(
            root, [("LastModified", xml.iso_time(info.last_modified)), ("ETag", f'"{info.etag}"')]
        )
        return _xml_response(root)

    # -- multipart uploads -----------------------------------------------------------------
    async def _create_multipart_upload(self, request: S3Request) -> Response:
        content_type, metadata = content_type_and_metadata(request.headers)
        await self._require_bucket(request.bucket)
        await _thread(self.store.check_url, request.url)  # refuse now what Complete would
        upload = await _thread(
            self.uploads.create,
            request.bucket,
            request.key,
            content_type or DEFAULT_CONTENT_TYPE,
            metadata,
        )
        root = xml.document("InitiateMultipartUploadResult")
        xml.add_all(
            root, [("Bucket", request.bucket), ("Key", request.key), ("UploadId", upload.upload_id)]
        )
        return _xml_response(root)

    async def _multipart_operation(self, request: S3Request) -> Response:
        method = request.method
        upload = await _thread(
            self.uploads.get, request.query["uploadId"], request.bucket, request.key
        )
        if method == "PUT":
            request.require_only({"uploadId", "partNumber"}, "UploadPart")
            if "x-amz-copy-source" in request.headers:
                raise request.not_implemented("UploadPartCopy")
            number = request.int_param("partNumber", None, 1, MAX_PART_NUMBER)
            body = await spool_body(
                request.receive, request.headers, self.body_dir, self.max_object_size
            )
            try:
                part = await _thread(self.uploads.put_part, upload, number, body.path, body.md5_hex)
            finally:
                body.discard()
            return Response(status_code=200, headers={"ETag": f'"{part.etag}"'})
        if method == "GET":
            request.require_only({"uploadId", "max-parts", "part-number-marker"}, "ListParts")
            return await self._list_parts(request, upload)
        if method == "DELETE":
            request.require_only({"uploadId"}, "AbortMultipartUpload")
            await _thread(self.uploads.abort, upload)
            return Response(status_code=204)
        if method == "POST":
            request.require_only({"uploadId"}, "CompleteMultipartUpload")
            return await self._complete_multipart_upload(request, upload)
        raise S3Error("MethodNotAllowed", f"{method} is not allowed on an upload", request.resource)

    async def _complete_multipart_upload(self, request: S3Request, upload: Upload) -> Response:
        body = await read_small_body(request.receive, request.headers, MAX_XML_BODY)
        document = xml.parse_xml(body, "CompleteMultipartUpload")
        requested = []
        for element in document.findall("Part"):
            number = xml.child_text(element, "PartNumber") or ""
            if not number.strip().isdigit():
                raise S3Error("MalformedXML", f"Bad PartNumber {number!r}")
            requested.append((int(number), xml.child_text(element, "ETag") or ""))
        parts = await _thread(self.uploads.choose_parts, upload, requested)
        claimed = await _thread(self.uploads.claim, upload)
        stream = ConcatenatedParts([claimed / part.path.name for part in parts])
        try:
            info = await _thread(
                self.store.put_stream, request.url, stream, upload.content_type, upload.metadata
            )
        except BaseException:
            stream.close()
            await _thread(self.uploads.release, upload, claimed)
            raise
        stream.close()
        await _thread(self.uploads.discard, claimed)
        root = xml.document("CompleteMultipartUploadResult")
        location = f"http://{request.host}/{quote(request.bucket)}/{quote(request.key)}"
        xml.add_all(
            root,
            [
                ("Location", location),
                ("Bucket", request.bucket),
                ("Key", request.key),
                ("ETag", f'"{info.etag}"'),
            ],
        )
        return _xml_response(root)

    async def _list_parts(self, request: S3Request, upload: Upload) -> Response:
        limit = request.int_param("max-parts", 1000, 0, 1000)
        marker = request.int_param("part-number-marker", 0, 0, MAX_PART_NUMBER)
        parts = [p for p in await _thread(self.uploads.parts, upload) if p.number > marker]
        shown = parts[:limit]
        root = xml.document("ListPartsResult")
        xml.add_all(
            root,
            [
                ("Bucket", request.bucket),
                ("Key", request.key),
                ("UploadId", upload.upload_id),
                ("PartNumberMarker", marker),
                ("NextPartNumberMarker", shown[-1].number if shown else marker),
                ("MaxParts", limit),
                ("IsTruncated", len(parts) > limit),
                ("StorageClass", "STANDARD"),
            ],
        )
        for part in shown:
            entry = xml.add(root, "Part")
            xml.add_all(
                entry,
                [
                    ("PartNumber", part.number),
                    ("LastModified", xml.iso_time(part.last_modified)),
                    ("ETag", f'"{part.etag}"'),
                    ("Size", part.size),
                ],
            )
        return _xml_response(root)


# -- helpers -------------------------------------------------------------------------------
async def _thread(function: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(function, *args)


async def _stream(reader: ObjectReader) -> AsyncIterator[bytes]:
    try:
        while chunk := await anyio.to_thread.run_sync(reader.read, _READ_CHUNK):
            yield chunk
    finally:
        reader.close()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _has_body(scope: Scope) -> bool:
    headers = Headers(scope=scope)
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def _error_response(error: S3Error, request_id: str, method: str) -> Response:
    # A HEAD answer has no body: the status and headers are all the client gets.
    empty = method == "HEAD" or error.status == 304
    body = b"" if empty else xml.error_xml(error, request_id)
    response = Response(
        body, status_code=error.status, media_type=xml.XML_CONTENT_TYPE, headers=error.headers
    )
    if method == "HEAD":
        response.headers["content-length"] = "0"
    return response


def _xml_response(root: Any, status: int = 200) -> Response:
    return Response(xml.to_bytes(root), status_code=status, media_type=xml.XML_CONTENT_TYPE)
