"""Input channels staged as files under `/opt/ml/input/data/<channel>` before a job starts.

Supported (CreateTrainingJob `InputDataConfig[*]`):
- `DataSource.S3DataSource` with `S3DataType`
  - `S3Prefix`: every object whose key starts with the prefix, at its key relative to the prefix
    (an object whose key *is* the prefix lands under its base name, as in SageMaker);
  - `ManifestFile`: the manifest's JSON list `[{"prefix": "s3://b/p/"}, "rel/key1", ...]`, each
    object at its relative key;
- `S3DataDistributionType` `FullyReplicated` (every host gets everything) or `ShardedByS3Key`
  (host i of n gets the keys whose position in key order is i modulo n);
- `CompressionType: Gzip`: gzip objects are decompressed, a `.gz` suffix dropped;
- `InputMode` `File` and `FastFile` (both staged as files).

Refused with a ValidationException: `Pipe` mode, `AugmentedManifestFile`, `FileSystemDataSource`.

When the object store keeps objects as local files, they are hard-linked instead of copied (a
copy only where linking fails, e.g. across file systems). The store replaces an object by
renaming a new file into place, so a linked channel file keeps the bytes it was staged with.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from salvia.errors import ValidationException
from salvia.store.objects import NoSuchBucket, NoSuchKey, ObjectStore, ObjectStoreError, parse_url

__all__ = ["ChannelError", "StagedChannel", "stage_channels", "validate_channels"]

_GZIP_MAGIC = b"\x1f\x8b"
_DOWNLOAD_THREADS = 8


class ChannelError(ValidationException):
    """A channel's data could not be staged (no objects, unreadable manifest, missing bucket).
    The training engine turns it into the job's FailureReason."""


@dataclass(frozen=True)
class StagedChannel:
    name: str
    files: int
    bytes: int
    linked: int  # files hard-linked from the object store rather than copied


@dataclass(frozen=True)
class _Item:
    url: str
    relative: str  # the path under the channel directory


def validate_channels(
    input_data_config: Sequence[Mapping[str, Any]], training_input_mode: str = "File"
) -> None:
    """Raise ValidationException for a channel Salvia cannot stage (call it at create time)."""
    for channel in input_data_config:
        name = channel.get("ChannelName", "?")
        mode = channel.get("InputMode") or training_input_mode
        if mode == "Pipe":
            raise ValidationException(
                f"Channel {name!r}: TrainingInputMode 'Pipe' is not supported by Salvia yet; "
                "use 'File' or 'FastFile'."
            )
        source = channel.get("DataSource") or {}
        if "FileSystemDataSource" in source:
            raise ValidationException(
                f"Channel {name!r}: FileSystemDataSource (EFS/FSx) is not supported by Salvia; "
                "use an S3DataSource."
            )
        s3 = source.get("S3DataSource")
        if s3 is None:
            raise ValidationException(f"Channel {name!r} has no S3DataSource.")
        data_type = s3.get("S3DataType", "S3Prefix")
        if data_type == "AugmentedManifestFile":
            raise ValidationException(
                f"Channel {name!r}: S3DataType 'AugmentedManifestFile' is not supported yet; "
                "use 'S3Prefix' or 'ManifestFile'."
            )
        if data_type not in ("S3Prefix", "ManifestFile"):
            raise ValidationException(f"Channel {name!r}: unknown S3DataType {data_type!r}.")
        if not str(s3.get("S3Uri", "")).startswith("s3://"):
            raise ValidationException(f"Channel {name!r}: S3Uri must start with s3://.")


def stage_channels(
    object_store: ObjectStore,
    input_data_config: Sequence[Mapping[str, Any]],
    data_root: Path,
    host_index: int = 0,
    host_count: int = 1,
    training_input_mode: str = "File",
) -> list[StagedChannel]:
    """Stage every channel into `data_root/<channel>` for host `host_index` of `host_count`
    (0-based). Raises ValidationException for an unsupported channel and ChannelError when a
    channel's data cannot be found or read."""
    validate_channels(input_data_config, training_input_mode)
    return [
        _stage_channel(object_store, channel, data_root, host_index, host_count)
        for channel in input_data_config
    ]


def _stage_channel(
    store: ObjectStore,
    channel: Mapping[str, Any],
    data_root: Path,
    host_index: int,
    host_count: int,
) -> StagedChannel:
    name = str(channel["ChannelName"])
    s3 = channel["DataSource"]["S3DataSource"]
    uri = str(s3["S3Uri"])
    if s3.get("S3DataType", "S3Prefix") == "ManifestFile":
        items = _manifest_items(store, name, uri)
    else:
        items = _prefix_items(store, name, uri)
    if not items:
        raise ChannelError(
            f"No S3 objects found under S3 URL {uri!r} given in input data source of channel "
            f"{name!r}. Please ensure that the bucket exists and that objects exist under that "
            "S3 prefix."
        )
    if s3.get("S3DataDistributionType") == "ShardedByS3Key" and host_count > 1:
        items = [item for i, item in enumerate(items) if i % host_count == host_index]
    gunzip = channel.get("CompressionType") == "Gzip"
    dest = data_root / name
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if not gunzip and _all_local(store, items):
            results = [_link_or_copy(store, item, dest) for item in items]
        else:
            with ThreadPoolExecutor(min(_DOWNLOAD_THREADS, len(items))) as pool:
                results = list(pool.map(lambda item: _download(store, item, dest, gunzip), items))
    except (NoSuchKey, NoSuchBucket) as exc:
        raise ChannelError(f"Channel {name!r}: {exc.message}") from exc
    except ObjectStoreError as exc:
        raise ChannelError(f"Channel {name!r}: could not read {uri!r}: {exc.message}") from exc
    return StagedChannel(
        name,
        files=len(results),
        bytes=sum(size for size, _ in results),
        linked=sum(1 for _, linked in results if linked),
    )


def _prefix_items(store: ObjectStore, channel: str, uri: str) -> list[_Item]:
    bucket, prefix = parse_url(uri)
    items = []
    for key in _list_keys(store, channel, bucket, prefix):
        if key.endswith("/"):
            continue  # a "folder" placeholder object
        # an object whose key is the whole prefix lands under its base name
        relative = PurePosixPath(key).name if key == prefix else key[len(prefix) :].lstrip("/")
        items.append(_Item(f"s3://{bucket}/{key}", relative))
    return items


def _list_keys(store: ObjectStore, channel: str, bucket: str, prefix: str) -> Iterator[str]:
    start_after: str | None = None
    while True:
        try:
            page = store.list_objects(bucket, prefix, start_after=start_after)
        except NoSuchBucket as exc:
            raise ChannelError(f"Channel {channel!r}: {exc.message}") from exc
        for info in page.objects:
            yield info.key
        if not page.is_truncated or page.next_start_after is None:
            return
        start_after = page.next_start_after


def _manifest_items(store: ObjectStore, channel: str, uri: str) -> list[_Item]:
    try:
        manifest = json.loads(store.read_bytes(uri))
    except (NoSuchKey, NoSuchBucket) as exc:
        raise ChannelError(f"Channel {channel!r}: manifest file {uri!r} not found.") from exc
    except ValueError as exc:
        raise ChannelError(f"Channel {channel!r}: manifest {uri!r} is not JSON: {exc}") from exc
    if (
        not isinstance(manifest, list)
        or not manifest
        or not isinstance(manifest[0], dict)
        or not str(manifest[0].get("prefix", "")).startswith("s3://")
        or not all(isinstance(entry, str) for entry in manifest[1:])
    ):
        raise ChannelError(
            f"Channel {channel!r}: manifest {uri!r} must be a JSON list "
            '[{"prefix": "s3://bucket/prefix/"}, "relative/key", ...].'
        )
    prefix = str(manifest[0]["prefix"])
    return [_Item(prefix + rel, rel.lstrip("/")) for rel in sorted(manifest[1:])]


def _target(dest: Path, relative: str) -> Path:
    parts = [part for part in PurePosixPath(relative).parts if part not in ("", ".", "/")]
    if not parts or ".." in parts:
        raise ChannelError(f"Object path {relative!r} cannot be staged as a file.")
    path = dest.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _all_local(store: ObjectStore, items: Sequence[_Item]) -> bool:
    return store.local_path(items[0].url) is not None


def _link_or_copy(store: ObjectStore, item: _Item, dest: Path) -> tuple[int, bool]:
    source = store.local_path(item.url)
    target = _target(dest, item.relative)
    if source is None or not source.is_file():
        return _download(store, item, dest, gunzip=False)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
        return target.stat().st_size, True
    except OSError:
        shutil.copyfile(source, target)
        return target.stat().st_size, False


def _download(store: ObjectStore, item: _Item, dest: Path, gunzip: bool) -> tuple[int, bool]:
    target = _target(dest, item.relative)
    with store.open(item.url) as reader:
        head = reader.read(2)
        if gunzip and head == _GZIP_MAGIC:
            target = target.with_name(target.name.removesuffix(".gz"))
            with target.open("wb") as out:
                _gunzip(itertools.chain([head], reader.iter_chunks()), out)
        else:
            with target.open("wb") as out:
                out.write(head)
                for chunk in reader.iter_chunks():
                    out.write(chunk)
    return target.stat().st_size, False


def _gunzip(chunks: Iterable[bytes], out: IO[bytes]) -> None:
    """Decompress a gzip stream, every member of it (as `gunzip` does)."""
    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    for chunk in chunks:
        while chunk:
            out.write(decompressor.decompress(chunk))
            if decompressor.eof:
                chunk = decompressor.unused_data
                decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
            else:
                chunk = b""
    out.write(decompressor.flush())


def source_objects(store: ObjectStore, name: str, s3_data_source: dict[str, Any]) -> list[_Item]:
    """The objects an `S3DataSource` names (a prefix's keys in order, or a manifest's entries),
    each with its path relative to the prefix. Raises ChannelError."""
    uri = s3_data_source["S3Uri"]
    try:
        if s3_data_source.get("S3DataType", "S3Prefix") == "ManifestFile":
            return _manifest_items(store, name, uri)
        return _prefix_items(store, name, uri)
    except ObjectStoreError as exc:
        raise ChannelError(f"{name}: could not read {uri!r}: {exc.message}") from exc
