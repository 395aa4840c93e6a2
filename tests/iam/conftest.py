"""What the identity-store tests share: a store on a fresh database of each backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from salvia.iam import IdentityStore, SecretBox
from salvia.store.sql import SqlMetadataStore
from tests.conftest import fresh_database


@pytest.fixture
def identities(backend: str, tmp_path: Path) -> Iterator[IdentityStore]:
    url, drop = fresh_database(backend)
    store = SqlMetadataStore(url or f"sqlite:///{tmp_path / 'salvia.db'}")
    yield IdentityStore(store, SecretBox.under(tmp_path), "123456789012")
    store.close()
    drop()
