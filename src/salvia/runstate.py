"""The running server's announcement file (`<home>/run/server.json`), read by `salvia status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from salvia.config import Settings


def state_file(settings: Settings) -> Path:
    return settings.runtime_dir / "server.json"


def write_state(settings: Settings, record: dict[str, Any]) -> None:
    path = state_file(settings)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(orjson.dumps(record))
    temporary.replace(path)


def clear_state(settings: Settings) -> None:
    state_file(settings).unlink(missing_ok=True)


def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        data = orjson.loads(state_file(settings).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
