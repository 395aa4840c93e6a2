"""The ObjectStore contract, run against every implementation.

S3ObjectStore runs against moto's standalone S3 server, started as a real process on a free
loopback port: an external service replaced by a real local one, nothing of Salvia's mocked.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from salvia.store.objects import (
    DEFAULT_CONTENT_TYPE,
    BucketAlreadyExists,
    BucketNotEmpty,
    ByteRange,
    InvalidBucketName,
    InvalidObjectName,
    InvalidRange,
    LocalObjectStore,
    NoSuchBucket,
    NoSuchKey,
    ObjectStore,
    S3ObjectStore,
)
from salvia.store.streams import PartsStream


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        instance: ObjectStore = LocalObjectStore(tmp_path / "objects")
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        instance = S3ObjectStore(endpoint, "testing", "testing", "us-east-1")
    yield instance
    instance.close()


@pytest.fixture
def bucket(store: ObjectStore) -> str:
    # Unique per test: the moto server lives for the whole session.
    name = f"test-{uuid.uuid4().hex[:12]}"
    store.create_bucket(name)
    return name


def _keys(store: ObjectStore, bucket: str, **kwargs: object) -> tuple[list[str], list[str]]:
    listing = store.list_objects(bucket, **kwargs)  # type: ignore[arg-type]
    return [o.key for o in listing.objects], listing.common_prefixes


class TestObjectStoreContract:
    def test_put_and_read_back_with_content_type_and_metadata(
        self, store: ObjectStore, bucket: str
    ) -> None:
        url = f"s3://{bucket}/models/model.bin"
        written = store.put_bytes(
            url, b"hello world", content_type="text/plain", metadata={"Owner": "alice"}
        )
        assert store.read_bytes(url) == b"hello world"
        info = store.info(url)
        assert (info.bucket, info.key, info.size) == (bucket, "models/model.bin", 11)
        assert info.etag == hashlib.md5(b"hello world").hexdigest() == written.etag
        assert info.content_type == "text/plain"
        assert dict(info.metadata) == {"owner": "alice"}
        assert info.last_modified.tzinfo is not None
        assert abs(info.last_modified - datetime.now(UTC)) < timedelta(minutes=5)

    def test_put_file_and_stream(self, store: ObjectStore, bucket: str, tmp_path: Path) -> None:
        source = tmp_path / "config.json"
        source.write_bytes(b'{"a": 1}')
        info = store.put_file(f"s3://{bucket}/config.json", source)
        assert info.content_type == "application/json"
        with source.open("rb") as fh:
            store.put_stream(f"s3://{bucket}/copy", fh)
        assert store.read_bytes(f"s3://{bucket}/copy") == b'{"a": 1}'
        assert store.info(f"s3://{bucket}/copy").content_type == DEFAULT_CONTENT_TYPE

    def test_put_stream_reads_until_eof(self, store: ObjectStore, bucket: str) -> None:
        data = os.urandom(17 * 1024 * 1024 + 3)  # past S3ObjectStore's single-PUT size

        class ShortReads:
            """A stream whose reads return at most 3 MiB, as a socket or a pipe may."""

            def __init__(self) -> None:
                self.offset = 0

            def read(self, size: int = -1) -> bytes:
                size = 3 * 1024 * 1024 if size < 0 else min(size, 3 * 1024 * 1024)
                chunk = data[self.offset : self.offset + size]
                self.offset += len(chunk)
                return chunk

        info = store.put_stream(f"s3://{bucket}/streamed", ShortReads())
        assert info.size == len(data)
        assert store.read_bytes(f"s3://{bucket}/streamed") == data

    def test_large_object_round_trip(self, store: ObjectStore, bucket: str, tmp_path: Path) -> None:
        data = os.urandom(20 * 1024 * 1024 + 17)
        source = tmp_path / "big.bin"
        source.write_bytes(data)
        store.put_file(f"s3://{bucket}/big.bin", source, metadata={"kind": "big"})
        with store.open(f"s3://{bucket}/big.bin") as reader:
            assert reader.info.size == len(data)
            assert reader.info.metadata == {"kind": "big"}
            assert b"".join(reader.iter_chunks()) == data

    def test_byte_ranges(self, store: ObjectStore, bucket: str) -> None:
        url = f"s3://{bucket}/digits"
        store.put_bytes(url, b"0123456789")
        for byte_range, expected, start, end in [
            (ByteRange(2, 5), b"2345", 2, 6),
            (ByteRange(7, None), b"789", 7, 10),
            (ByteRange(None, 3), b"789", 7, 10),
            (ByteRange(8, 100), b"89", 8, 10),
        ]:
            with store.open(url, byte_range) as reader:
                assert reader.read() == expected
                assert (reader.start, reader.end, reader.info.size) == (start, end, 10)
        with pytest.raises(InvalidRange) as raised:
            store.open(url, ByteRange(10, None))
        assert raised.value.size == 10

    def test_missing_objects_and_buckets(self, store: ObjectStore, bucket: str) -> None:
        with pytest.raises(NoSuchKey):
            store.info(f"s3://{bucket}/absent")
        with pytest.raises(NoSuchKey):
            store.open(f"s3://{bucket}/absent")
        assert not store.exists(f"s3://{bucket}/absent")
        store.delete(f"s3://{bucket}/absent")  # deleting nothing succeeds, as in S3
        with pytest.raises(NoSuchBucket):
            store.info("s3://no-such-bucket-here/key")
        with pytest.raises(NoSuchBucket):
            store.put_bytes("s3://no-such-bucket-here/key", b"x")
        with pytest.raises(NoSuchBucket):
            store.list_objects("no-such-bucket-here")

    def test_delete_and_overwrite(self, store: ObjectStore, bucket: str) -> None:
        url = f"s3://{bucket}/a/b/c"
        first = store.put_bytes(url, b"first")
        second = store.put_bytes(url, b"second!")
        assert first.etag != second.etag
        assert store.read_bytes(url) == b"second!"
        store.delete(url)
        assert not store.exists(url)
        assert store.list_objects(bucket).objects == []

    def test_listing_order_prefix_delimiter(self, store: ObjectStore, bucket: str) -> None:
        keys = ["dir/y", "a.txt", "dir/sub/z", "dir-other", "e/f", "dir/x", "dir/sub/w"]
        for key in keys:
            store.put_bytes(f"s3://{bucket}/{key}", key.encode())
        assert _keys(store, bucket) == (sorted(keys), [])
        assert _keys(store, bucket, delimiter="/") == (["a.txt", "dir-other"], ["dir/", "e/"])
        assert _keys(store, bucket, prefix="dir/", delimiter="/") == (
            ["dir/x", "dir/y"],
            ["dir/sub/"],
        )
        assert _keys(store, bucket, prefix="dir") == (
            ["dir-other", "dir/sub/w", "dir/sub/z", "dir/x", "dir/y"],
            [],
        )
        assert _keys(store, bucket, start_after="dir/sub/w") == (
            ["dir/sub/z", "dir/x", "dir/y", "e/f"],
            [],
        )
        listing = store.list_objects(bucket, prefix="dir/")
        assert [o.size for o in listing.objects] == [9, 9, 5, 5]
        assert listing.objects[0].etag == hashlib.md5(b"dir/sub/w").hexdigest()

    @pytest.mark.parametrize("delimiter", [None, "/"])
    def test_listing_pages_continue_where_they_stopped(
        self, store: ObjectStore, bucket: str, delimiter: str | None
    ) -> None:
        keys = ["a", "b/1", "b/2", "c", "d/1", "d/2/3", "e"]
        for key in keys:
            store.put_bytes(f"s3://{bucket}/{key}", b"")
        everything = store.list_objects(bucket, delimiter=delimiter)
        names: list[str] = []
        start_after = None
        for _ in range(10):
            page = store.list_objects(bucket, delimiter=delimiter, start_after=start_after, limit=2)
            assert len(page.objects) + len(page.common_prefixes) <= 2
            names += [o.key for o in page.objects] + page.common_prefixes
            if not page.is_truncated:
                break
            start_after = page.next_start_after
        expected = [o.key for o in everything.objects] + everything.common_prefixes
        assert sorted(names) == sorted(expected)
        assert len(names) == len(expected)

    def test_copy_keeps_or_replaces_metadata(self, store: ObjectStore, bucket: str) -> None:
        src = f"s3://{bucket}/src"
        store.put_bytes(src, b"payload", content_type="text/csv", metadata={"k": "v"})
        kept = store.copy(src, f"s3://{bucket}/dst/kept")
        assert (kept.content_type, dict(kept.metadata)) == ("text/csv", {"k": "v"})
        assert store.read_bytes(f"s3://{bucket}/dst/kept") == b"payload"
        replaced = store.copy(src, f"s3://{bucket}/dst/new", metadata={"x": "y"})
        assert (replaced.content_type, dict(replaced.metadata)) == (
            DEFAULT_CONTENT_TYPE,
            {"x": "y"},
        )
        with pytest.raises(NoSuchKey):
            store.copy(f"s3://{bucket}/absent", f"s3://{bucket}/dst/none")

    def test_buckets(self, store: ObjectStore) -> None:
        name = f"bucket-{uuid.uuid4().hex[:10]}"
        assert not store.bucket_exists(name)
        store.create_bucket(name)
        assert store.bucket_exists(name)
        (listed,) = [b for b in store.list_buckets() if b.name == name]
        assert abs(listed.created - datetime.now(UTC)) < timedelta(minutes=5)
        with pytest.raises(BucketAlreadyExists):
            store.create_bucket(name)
        store.put_bytes(f"s3://{name}/deep/key", b"x")
        with pytest.raises(BucketNotEmpty):
            store.delete_bucket(name)
        store.delete(f"s3://{name}/deep/key")
        store.delete_bucket(name)
        assert not store.bucket_exists(name)
        with pytest.raises(NoSuchBucket):
            store.delete_bucket(name)
        with pytest.raises(InvalidBucketName):
            store.create_bucket("Not_A_Bucket")

    def test_keys_with_spaces_unicode_and_plus(self, store: ObjectStore, bucket: str) -> None:
        keys = ["data set/file one.csv", "ünïcødé/日本.txt", "a+b=c&d.bin", "100%/q?x#y"]
        for key in keys:
            store.put_bytes(f"s3://{bucket}/{key}", key.encode())
        assert _keys(store, bucket) == (sorted(keys), [])
        for key in keys:
            assert store.read_bytes(f"s3://{bucket}/{key}") == key.encode()

    def test_file_urls(self, store: ObjectStore, bucket: str, tmp_path: Path) -> None:
        local = tmp_path / "plain" / "file.txt"
        store.put_bytes(local.as_uri(), b"local bytes")
        assert local.read_bytes() == b"local bytes"
        assert store.info(local.as_uri()).size == 11
        assert store.local_path(local.as_uri()) == local
        store.copy(local.as_uri(), f"s3://{bucket}/from-file")
        assert store.read_bytes(f"s3://{bucket}/from-file") == b"local bytes"
        back = tmp_path / "back.txt"
        store.copy(f"s3://{bucket}/from-file", back.as_uri())
        assert back.read_bytes() == b"local bytes"

    def test_local_path(self, store: ObjectStore, bucket: str) -> None:
        store.put_bytes(f"s3://{bucket}/train/part-0.csv", b"1,2\n")
        path = store.local_path(f"s3://{bucket}/train/")
        if isinstance(store, LocalObjectStore):
            assert path is not None
            assert (path / "part-0.csv").read_bytes() == b"1,2\n"
        else:
            assert path is None

    def test_readers_never_see_a_partial_object(self, store: ObjectStore, bucket: str) -> None:
        url = f"s3://{bucket}/swapped"
        versions = [bytes([65 + i]) * (4 * 1024 * 1024) for i in range(2)]
        store.put_bytes(url, versions[0])
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i in range(8):
                    store.put_bytes(url, versions[i % 2])
            except BaseException as exc:
                errors.append(exc)
            finally:
                stop.set()

        writer = threading.Thread(target=write)
        writer.start()
        reads = 0
        while not stop.is_set() or reads < 3:
            with store.open(url) as reader:
                data = reader.read()
                assert data in versions
                assert reader.info.etag == hashlib.md5(data).hexdigest()
            reads += 1
        writer.join()
        assert not errors


class TestLocalObjectStore:
    def test_layout_is_a_plain_directory_tree(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path)
        store.create_bucket("data")
        store.put_bytes("s3://data/train/x.csv", b"1\n", metadata={"m": "1"})
        assert (tmp_path / "data" / "train" / "x.csv").read_bytes() == b"1\n"
        assert [o.key for o in store.list_objects("data").objects] == ["train/x.csv"]
        assert [b.name for b in store.list_buckets()] == ["data"]
        # a fresh instance over the same root sees the same objects and metadata
        again = LocalObjectStore(tmp_path).info("s3://data/train/x.csv")
        assert again.metadata == {"m": "1"}

    def test_files_placed_by_hand_are_objects(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path)
        store.create_bucket("data")
        (tmp_path / "data" / "raw").mkdir()
        (tmp_path / "data" / "raw" / "hand.txt").write_bytes(b"by hand")
        (info,) = store.list_objects("data").objects
        assert (info.key, info.etag) == ("raw/hand.txt", hashlib.md5(b"by hand").hexdigest())
        # rewritten in place by hand: the stale sidecar is noticed
        (tmp_path / "data" / "raw" / "hand.txt").write_bytes(b"changed by hand")
        assert (
            store.info("s3://data/raw/hand.txt").etag == hashlib.md5(b"changed by hand").hexdigest()
        )

    @pytest.mark.parametrize(
        "key", ["../escape", "a/../../b", "/abs", "a//b", "dir/", ".salvia-meta/x", "a/./b"]
    )
    def test_keys_that_would_leave_the_bucket_are_refused(self, tmp_path: Path, key: str) -> None:
        store = LocalObjectStore(tmp_path)
        store.create_bucket("data")
        with pytest.raises(InvalidObjectName):
            store.put_bytes(f"s3://data/{key}", b"x")
        assert not any((tmp_path / "data").iterdir())

    def test_a_key_cannot_be_both_object_and_prefix(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path)
        store.create_bucket("data")
        store.put_bytes("s3://data/a/b", b"x")
        with pytest.raises(InvalidObjectName):
            store.put_bytes("s3://data/a", b"y")
        with pytest.raises(InvalidObjectName):
            store.put_bytes("s3://data/a/b/c", b"z")
        assert store.read_bytes("s3://data/a/b") == b"x"

    def test_deleting_the_last_key_removes_empty_directories(self, tmp_path: Path) -> None:
        store = LocalObjectStore(tmp_path)
        store.create_bucket("data")
        store.put_bytes("s3://data/a/b/c", b"x")
        store.delete("s3://data/a/b/c")
        assert list((tmp_path / "data").iterdir()) == []
        store.delete_bucket("data")
        assert not (tmp_path / "data").exists()


def test_an_object_stored_while_its_parts_are_made(store: ObjectStore, bucket: str) -> None:
    parts = PartsStream()
    url = f"s3://{bucket}/streamed.out"
    stored: list[object] = []
    writer = threading.Thread(target=lambda: stored.append(store.put_stream(url, parts)))
    writer.start()
    expected = b""
    for index in range(40):
        piece = os.urandom(50_000 + index)
        parts.write(piece)
        expected += piece
    assert not store.exists(url)  # nothing is there before the end
    parts.end()
    writer.join(30)
    assert store.read_bytes(url) == expected
    assert stored[0].etag.strip('"') == hashlib.md5(expected).hexdigest()  # type: ignore[attr-defined]


def test_a_stream_that_fails_leaves_no_object(store: ObjectStore, bucket: str) -> None:
    parts = PartsStream()
    url = f"s3://{bucket}/failed.out"
    failures: list[BaseException] = []

    def write() -> None:
        try:
            store.put_stream(url, parts)
        except RuntimeError as error:
            failures.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    parts.write(os.urandom(100_000))
    parts.fail(RuntimeError("the job stopped"))
    writer.join(30)
    assert [str(f) for f in failures] == ["the job stopped"]
    assert not store.exists(url)
