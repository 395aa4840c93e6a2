"""What a job leaves behind: `model.tar.gz` and `output.tar.gz`, and checkpoints synced with S3."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from salvia.store.objects import NoSuchKey, ObjectStore, parse_url


def pack(directories: Sequence[Path], destination: Path) -> Path:
    """Tar and gzip the merged contents of `directories` (one per host) into `destination`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(destination, "w:gz", compresslevel=6) as archive:
        seen: set[str] = set()
        for directory in directories:
            if not directory.is_dir():
                continue
            for path in sorted(directory.rglob("*")):
                name = path.relative_to(directory).as_posix()
                if name in seen or not (path.is_file() or path.is_dir()):
                    continue
                seen.add(name)
                archive.add(path, arcname=name, recursive=False)
    return destination


def upload_archive(
    objects: ObjectStore,
    directories: Sequence[Path],
    url: str,
    scratch: Path,
    *,
    even_if_empty: bool = False,
) -> str | None:
    """Pack and upload (the store's put is atomic); None when there is nothing to pack, unless
    `even_if_empty` (a completed job always gets a model.tar.gz, as on SageMaker)."""
    if not even_if_empty and not any(d.is_dir() and any(d.iterdir()) for d in directories):
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=scratch, suffix=".tar.gz")
    os.close(fd)
    try:
        pack(directories, Path(name))
        objects.put_file(url, Path(name), content_type="application/x-gzip")
    finally:
        Path(name).unlink(missing_ok=True)
    return url


def join_url(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


class CheckpointSync:
    """Mirrors a local checkpoint directory with an S3 prefix: restore at start, upload what
    changed during the run and at its end."""

    def __init__(self, objects: ObjectStore, s3_uri: str, local_dir: Path) -> None:
        self.objects = objects
        self.s3_uri = s3_uri.rstrip("/") + "/"
        self.local_dir = local_dir
        self._uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns)

    def restore(self) -> int:
        bucket, prefix = parse_url(self.s3_uri)
        count = 0
        start_after = None
        while True:
            listing = self.objects.list_objects(bucket, prefix=prefix, start_after=start_after)
            for item in listing.objects:
                relative = item.key[len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue
                target = self.local_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    target.write_bytes(self.objects.read_bytes(f"s3://{bucket}/{item.key}"))
                except NoSuchKey:
                    continue
                stat = target.stat()
                self._uploaded[relative] = (stat.st_size, stat.st_mtime_ns)
                count += 1
            if not listing.is_truncated:
                return count
            start_after = listing.next_start_after

    def upload_changed(self) -> int:
        count = 0
        if not self.local_dir.is_dir():
            return 0
        for path in sorted(self.local_dir.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(self.local_dir).as_posix()
            stat = path.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
            if self._uploaded.get(relative) == signature:
                continue
            try:
                self.objects.put_file(self.s3_uri + relative, path)
            except FileNotFoundError:
                continue  # removed by the job while we looked
            self._uploaded[relative] = signature
            count += 1
        return count
