"""Channels staged as files for one instance, from a local object store."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest

from salvia.compute.channels import ChannelError, stage_channels, validate_channels
from salvia.errors import ValidationException
from salvia.store.objects import LocalObjectStore


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "objects")
    store.create_bucket("bucket")
    return store


def channel(name: str, uri: str, **extra: Any) -> dict[str, Any]:
    s3 = {"S3DataType": extra.pop("data_type", "S3Prefix"), "S3Uri": uri}
    if "distribution" in extra:
        s3["S3DataDistributionType"] = extra.pop("distribution")
    return {"ChannelName": name, "DataSource": {"S3DataSource": s3}, **extra}


def files_under(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_prefix_keeps_relative_keys_and_hard_links(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://bucket/data/train/a.csv", b"1,2\n")
    store.put_bytes("s3://bucket/data/train/sub/b.csv", b"3,4\n")
    store.put_bytes("s3://bucket/data/other.csv", b"no\n")
    data = tmp_path / "data"
    staged = stage_channels(store, [channel("train", "s3://bucket/data/train/")], data)
    assert files_under(data / "train") == {"a.csv": b"1,2\n", "sub/b.csv": b"3,4\n"}
    assert staged[0].files == 2 and staged[0].bytes == 8 and staged[0].linked == 2
    source = store.local_path("s3://bucket/data/train/a.csv")
    assert source is not None
    assert os.path.samefile(source, data / "train" / "a.csv")


def test_replacing_an_object_leaves_the_staged_file_alone(
    store: LocalObjectStore, tmp_path: Path
) -> None:
    store.put_bytes("s3://bucket/train/a.csv", b"old")
    stage_channels(store, [channel("train", "s3://bucket/train")], tmp_path / "data")
    store.put_bytes("s3://bucket/train/a.csv", b"new")
    assert (tmp_path / "data" / "train" / "a.csv").read_bytes() == b"old"


def test_single_object_uri_lands_under_its_name(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://bucket/data/train.csv", b"x")
    stage_channels(store, [channel("train", "s3://bucket/data/train.csv")], tmp_path)
    assert files_under(tmp_path / "train") == {"train.csv": b"x"}


def test_manifest_file(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://bucket/images/cat/1.jpg", b"c1")
    store.put_bytes("s3://bucket/images/dog/2.jpg", b"d2")
    store.put_bytes("s3://bucket/images/skip.jpg", b"no")
    manifest = [{"prefix": "s3://bucket/images/"}, "cat/1.jpg", "dog/2.jpg"]
    store.put_bytes("s3://bucket/manifest.json", json.dumps(manifest).encode())
    ch = channel("train", "s3://bucket/manifest.json", data_type="ManifestFile")
    stage_channels(store, [ch], tmp_path)
    assert files_under(tmp_path / "train") == {"cat/1.jpg": b"c1", "dog/2.jpg": b"d2"}


def test_bad_manifest_is_a_channel_error(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://bucket/manifest.json", b'{"prefix": "s3://bucket/"}')
    ch = channel("train", "s3://bucket/manifest.json", data_type="ManifestFile")
    with pytest.raises(ChannelError, match="must be a JSON list"):
        stage_channels(store, [ch], tmp_path)
    missing = channel("train", "s3://bucket/nope.json", data_type="ManifestFile")
    with pytest.raises(ChannelError, match="not found"):
        stage_channels(store, [missing], tmp_path)


def test_sharded_by_key_splits_across_hosts(store: LocalObjectStore, tmp_path: Path) -> None:
    for i in range(5):
        store.put_bytes(f"s3://bucket/shards/part-{i}", str(i).encode())
    replicated = channel("all", "s3://bucket/shards/")
    sharded = channel("train", "s3://bucket/shards/", distribution="ShardedByS3Key")
    seen = []
    for host in range(2):
        root = tmp_path / f"algo-{host + 1}"
        stage_channels(store, [sharded, replicated], root, host_index=host, host_count=2)
        seen.append(sorted(files_under(root / "train")))
        assert len(files_under(root / "all")) == 5
    assert seen == [["part-0", "part-2", "part-4"], ["part-1", "part-3"]]


def test_gzip_objects_are_decompressed(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://bucket/gz/a.csv.gz", gzip.compress(b"1,2\n") + gzip.compress(b"3,4\n"))
    store.put_bytes("s3://bucket/gz/b.csv", b"plain\n")
    ch = channel("train", "s3://bucket/gz/", CompressionType="Gzip")
    staged = stage_channels(store, [ch], tmp_path)
    assert files_under(tmp_path / "train") == {"a.csv": b"1,2\n3,4\n", "b.csv": b"plain\n"}
    assert staged[0].linked == 0


def test_missing_prefix_and_bucket_are_channel_errors(
    store: LocalObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(ChannelError, match="No S3 objects found under S3 URL"):
        stage_channels(store, [channel("train", "s3://bucket/empty/")], tmp_path)
    with pytest.raises(ChannelError, match="train"):
        stage_channels(store, [channel("train", "s3://no-such-bucket/x/")], tmp_path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (channel("t", "s3://bucket/x", InputMode="Pipe"), "Pipe"),
        (channel("t", "s3://bucket/x", data_type="AugmentedManifestFile"), "not supported yet"),
        (
            {"ChannelName": "t", "DataSource": {"FileSystemDataSource": {"FileSystemId": "fs"}}},
            "FileSystemDataSource",
        ),
    ],
)
def test_unsupported_channels_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationException, match=message):
        validate_channels([config])


def test_fast_file_is_staged_as_files(store: LocalObjectStore, tmp_path: Path) -> None:
    store.put_bytes("s3://bucket/ff/a", b"a")
    stage_channels(store, [channel("train", "s3://bucket/ff/", InputMode="FastFile")], tmp_path)
    assert files_under(tmp_path / "train") == {"a": b"a"}
