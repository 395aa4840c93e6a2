"""Small JSON records on disk, written atomically: a reader sees the old record or the new one,
never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson


def write_json(path: Path, record: dict[str, Any], tmp_dir: Path | None = None) -> None:
    """Write via a temporary file in `tmp_dir` (default: beside `path`, same file system)."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps(record))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The record, or None when the file is missing, unreadable or not a JSON object."""
    try:
        record = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None
