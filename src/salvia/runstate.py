"""The running server's announcement file (`<home>/run/server.json`), read by `salvia status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from salvia.config import Settings
from salvia.jsonfile import read_json, write_json


def state_file(settings: Settings) -> Path:
    return settings.runtime_dir / "server.json"


def write_state(settings: Settings, record: dict[str, Any]) -> None:
    write_json(state_file(settings), record)


def clear_state(settings: Settings) -> None:
    state_file(settings).unlink(missing_ok=True)


def read_state(settings: Settings) -> dict[str, Any] | None:
    return read_json(state_file(settings))
