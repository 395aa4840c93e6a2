"""Fixtures of the API tests: the real Salvia server, seen as an S3 endpoint."""

from __future__ import annotations

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


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[S3Endpoint]:
    """A fresh server of the test's own (the S3 tests expect an empty object store).

    The object store does not depend on the metadata backend, so SQLite is enough here.
    """
    home = tmp_path / "home"
    home.mkdir()
    server = SalviaServer(home).start()
    try:
        yield S3Endpoint(server.url, home / "objects", home / "run" / "s3")
    finally:
        server.stop()
