"""The S3 protocol, driven by boto3 against a real server on a free loopback port."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

MiB = 1024 * 1024


@pytest.fixture
def s3(s3_endpoint: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    s3.create_bucket(Bucket="data")
    return "data"


def _code(error: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = error.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _raw(endpoint: Any, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
    parts = urlsplit(endpoint.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_bucket_lifecycle(s3: Any) -> None:
    s3.create_bucket(Bucket="first")
    s3.create_bucket(Bucket="second", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.head_bucket(Bucket="first")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["first", "second"]
    with pytest.raises(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="first")
    s3.put_object(Bucket="first", Key="k", Body=b"x")
    with pytest.raises(ClientError) as raised:
        s3.delete_bucket(Bucket="first")
    assert _code(raised) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket="first", Key="k")
    s3.delete_bucket(Bucket="first")
    with pytest.raises(ClientError) as raised:
        s3.head_bucket(Bucket="first")
    assert _code(raised) == ("404", 404)
    with pytest.raises(ClientError) as raised:
        s3.create_bucket(Bucket="Bad_Name")
    assert _code(raised)[1] == 400
    assert s3.get_bucket_location(Bucket="second")["LocationConstraint"] is None


def test_put_get_head_delete(s3: Any, bucket: str, s3_endpoint: Any) -> None:
    put = s3.put_object(
        Bucket=bucket,
        Key="models/model.json",
        Body=b'{"weights": [1, 2, 3]}',
        ContentType="application/json",
        Metadata={"Trained-By": "salvia"},
    )
    assert put["ETag"] == '"' + hashlib.md5(b'{"weights": [1, 2, 3]}').hexdigest() + '"'
    got = s3.get_object(Bucket=bucket, Key="models/model.json")
    assert got["Body"].read() == b'{"weights": [1, 2, 3]}'
    assert got["ContentType"] == "application/json"
    assert got["Metadata"] == {"trained-by": "salvia"}
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key="models/model.json")
    assert head["ContentLength"] == 22
    assert head["LastModified"] == got["LastModified"]
    # the object is a plain file in the objects directory
    assert (s3_endpoint.objects_dir / bucket / "models" / "model.json").read_bytes()[:2] == b'{"'
    s3.delete_object(Bucket=bucket, Key="models/model.json")
    with pytest.raises(ClientError) as raised:
        s3.head_object(Bucket=bucket, Key="models/model.json")
    assert _code(raised) == ("404", 404)


def test_ranges_and_conditions(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="digits", Body=b"0123456789")
    part = s3.get_object(Bucket=bucket, Key="digits", Range="bytes=2-5")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert (part["Body"].read(), part["ContentRange"]) == (b"2345", "bytes 2-5/10")
    assert s3.get_object(Bucket=bucket, Key="digits", Range="bytes=-3")["Body"].read() == b"789"
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket=bucket, Key="digits", Range="bytes=10-")
    assert _code(raised) == ("InvalidRange", 416)
    etag = s3.head_object(Bucket=bucket, Key="digits")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="digits", IfMatch=etag)["Body"].read() == b"0123456789"
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket=bucket, Key="digits", IfMatch='"other"')
    assert _code(raised) == ("PreconditionFailed", 412)
    with pytest.raises(ClientError) as raised:
        s3.get_object(Bucket=bucket, Key="digits", IfNoneMatch=etag)
    assert _code(raised)[1] == 304


def test_upload_and_download_a_large_file_in_parts(
    s3: Any, bucket: str, tmp_path: Path, s3_endpoint: Any
) -> None:
    data = os.urandom(20 * MiB + 123)
    source, target = tmp_path / "big.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    s3.upload_file(str(source), bucket, "datasets/big.bin")  # multipart above 8 MiB
    assert s3.head_object(Bucket=bucket, Key="datasets/big.bin")["ContentLength"] == len(data)
    s3.download_file(bucket, "datasets/big.bin", str(target))  # ranged GETs in parallel
    assert target.read_bytes() == data
    assert (s3_endpoint.objects_dir / bucket / "datasets" / "big.bin").read_bytes() == data
    assert list((s3_endpoint.scratch_dir / "s3-multipart").iterdir()) == []


def test_listing_with_prefix_delimiter_and_pages(s3: Any, bucket: str) -> None:
    keys = ["a.txt", "dir/x", "dir/y", "dir/sub/z", "dir-other", "e/f"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == sorted(keys)
    assert listed["KeyCount"] == 6 and not listed["IsTruncated"]
    by_dir = s3.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
    assert [o["Key"] for o in by_dir["Contents"]] == ["dir/x", "dir/y"]
    assert by_dir["CommonPrefixes"] == [{"Prefix": "dir/sub/"}]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="dir/x")
    assert [o["Key"] for o in after["Contents"]] == ["dir/y", "e/f"]

    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}
    )
    seen: list[str] = []
    for page in pages:
        assert page["KeyCount"] <= 2
        seen += [o["Key"] for o in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert sorted(seen) == ["a.txt", "dir-other", "dir/", "e/"]

    v1 = s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4})
    assert [o["Key"] for page in v1 for o in page["Contents"]] == sorted(keys)


def test_copy_object(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket, Key="src/a b.csv", Body=b"1,2\n", ContentType="text/csv", Metadata={"k": "v"}
    )
    s3.create_bucket(Bucket="other")
    s3.copy_object(
        Bucket="other", Key="copy.csv", CopySource={"Bucket": bucket, "Key": "src/a b.csv"}
    )
    copied = s3.get_object(Bucket="other", Key="copy.csv")
    assert (copied["Body"].read(), copied["ContentType"], copied["Metadata"]) == (
        b"1,2\n",
        "text/csv",
        {"k": "v"},
    )
    s3.copy_object(
        Bucket=bucket,
        Key="src/a b.csv",
        CopySource=f"{bucket}/src/a b.csv",
        MetadataDirective="REPLACE",
        Metadata={"new": "1"},
        ContentType="text/plain",
    )
    head = s3.head_object(Bucket=bucket, Key="src/a b.csv")
    assert (head["Metadata"], head["ContentType"]) == ({"new": "1"}, "text/plain")
    with pytest.raises(ClientError) as raised:
        s3.copy_object(Bucket=bucket, Key="src/a b.csv", CopySource=f"{bucket}/src/a b.csv")
    assert _code(raised) == ("InvalidRequest", 400)
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.copy_object(Bucket=bucket, Key="x", CopySource=f"{bucket}/absent")


def test_delete_objects(s3: Any, bucket: str) -> None:
    for key in ["a", "b", "c"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "never-was"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["a", "b", "never-was"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["c"]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}], "Quiet": True})
    assert "Deleted" not in quiet
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_multipart_abort_list_parts_and_bad_completions(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1, Body=b"a")
    s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=2, Body=b"b")
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 1), (2, 1)]
    assert parts[0]["ETag"] == small["ETag"]
    with pytest.raises(ClientError) as raised:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0000"'}]},
        )
    assert _code(raised) == ("InvalidPart", 400)
    with pytest.raises(ClientError) as raised:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="mp",
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
            },
        )
    assert _code(raised) == ("EntityTooSmall", 400)
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id)
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=bucket, Key="mp")


def test_multipart_complete_with_one_small_part(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key="one", ContentType="text/plain", Metadata={"m": "1"}
    )["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="one", UploadId=upload_id, PartNumber=1, Body=b"hi")
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="one",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    got = s3.get_object(Bucket=bucket, Key="one")
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == (
        b"hi",
        "text/plain",
        {"m": "1"},
    )


def test_error_codes(s3: Any, bucket: str) -> None:
    with pytest.raises(s3.exceptions.NoSuchKey) as missing:
        s3.get_object(Bucket=bucket, Key="absent")
    assert _code(missing) == ("NoSuchKey", 404)
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.list_objects_v2(Bucket="no-such-bucket")
    with pytest.raises(ClientError) as raised:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"x")
    assert _code(raised) == ("NoSuchBucket", 404)
    with pytest.raises(ClientError) as raised:
        s3.get_bucket_acl(Bucket=bucket)
    assert _code(raised) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as raised:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert _code(raised) == ("NotImplemented", 501)
    with pytest.raises(ClientError) as raised:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!not-a-token!!")
    assert _code(raised) == ("InvalidArgument", 400)


def test_keys_with_spaces_unicode_and_reserved_characters(s3: Any, bucket: str) -> None:
    keys = ["data set/file one.csv", "ünïcødé/日本.txt", "a+b=c&d.bin", "100%/q?x#y"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == sorted(keys)
    by_prefix = s3.list_objects_v2(Bucket=bucket, Prefix="ünïcødé/", Delimiter="/")
    assert [o["Key"] for o in by_prefix["Contents"]] == ["ünïcødé/日本.txt"]
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()


def test_presigned_get(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="shared/file.txt", Body=b"shared")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared/file.txt"}, ExpiresIn=60
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"shared"


def test_virtual_host_addressing(s3: Any, bucket: str, s3_endpoint: Any) -> None:
    port = urlsplit(s3_endpoint.url).port
    host = f"{bucket}.localhost:{port}"
    status, _, _ = _raw(s3_endpoint, "PUT", "/v/key.txt", b"virtual", Host=host)
    assert status == 200
    assert s3.get_object(Bucket=bucket, Key="v/key.txt")["Body"].read() == b"virtual"
    status, _, body = _raw(s3_endpoint, "GET", "/?list-type=2", Host=host)
    assert status == 200 and b"<Key>v/key.txt</Key>" in body


def test_aws_chunked_body(s3: Any, bucket: str, s3_endpoint: Any) -> None:
    payload = b"hello, " * 3000 + b"world"
    chunks = [payload[:8192], payload[8192:]]
    body = b"".join(
        f"{len(c):x};chunk-signature={'0' * 64}\r\n".encode() + c + b"\r\n" for c in chunks
    )
    body += b"0;chunk-signature=" + b"0" * 64 + b"\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    status, headers, _ = _raw(
        s3_endpoint,
        "PUT",
        f"/{bucket}/chunked",
        body,
        **{
            "Content-Encoding": "aws-chunked",
            "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "x-amz-decoded-content-length": str(len(payload)),
        },
    )
    assert status == 200
    assert headers["ETag"] == f'"{hashlib.md5(payload).hexdigest()}"'
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == payload
    status, _, error = _raw(
        s3_endpoint,
        "PUT",
        f"/{bucket}/broken",
        b"10\r\nshort",
        **{"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "16"},
    )
    assert status == 400 and b"<Code>IncompleteBody</Code>" in error


def test_bad_input_is_never_a_server_error(bucket: str, s3_endpoint: Any) -> None:
    cases = [
        ("POST", f"/{bucket}?delete", b"<not xml"),
        ("POST", f"/{bucket}?delete", b"<Delete></Delete>"),
        ("GET", f"/{bucket}?list-type=2&max-keys=lots", b""),
        ("PUT", f"/{bucket}/k?partNumber=1&uploadId=../../etc", b"x"),
        ("PUT", f"/{bucket}/%ff%fe", b"x"),
        ("PUT", f"/{bucket}/a/../../escape", b"x"),
        ("PATCH", f"/{bucket}/k", b""),
        ("PUT", f"/{bucket}/k", b"x"),  # with a wrong Content-MD5, below
    ]
    for method, path, body in cases:
        headers = {"Content-MD5": "AAAAAAAAAAAAAAAAAAAAAA=="} if path.endswith("/k") else {}
        status, _, error = _raw(s3_endpoint, method, path, body, **headers)
        assert 400 <= status < 500, (method, path, status, error)
        assert b"<Code>" in error and b"<RequestId>" in error
