"""Fixtures of the API tests: the real Salvia server, seen as an S3 endpoint."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SalviaServer


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    objects_dir: Path  # where the default local object store keeps the bytes
    scratch_dir: Path  # where multipart parts wait for completion


@pytest.fixture(scope="module")
def _s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One server per module: the object store does not depend on the metadata backend, so
    SQLite is enough here."""
    home = tmp_path_factory.mktemp("s3") / "home"
    home.mkdir()
    server = SalviaServer(home).start()
    try:
        yield S3Endpoint(server.url, home / "objects", home / "run" / "s3")
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(_s3_server: S3Endpoint) -> S3Endpoint:
    """The module's server with an empty object store, as each S3 test expects, without a
    server started per test: the local store keeps a bucket as a directory (its metadata and
    scratch files in hidden ones, emptied but kept), and request bodies and multipart uploads
    wait in directories of their own (emptied but kept), so emptying those empties the store."""
    _empty(_s3_server.objects_dir, keep={".salvia-meta", ".salvia-tmp"})
    scratch = _s3_server.scratch_dir  # request bodies and multipart uploads, each a directory
    _empty(scratch, keep={p.name for p in scratch.iterdir() if p.is_dir()})
    return _s3_server


def _empty(directory: Path, keep: set[str]) -> None:
    for entry in directory.iterdir():
        if entry.name in keep:
            _empty(entry, keep=set())
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
