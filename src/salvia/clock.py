"""Time and ids come from here, so tests and the reconciler can rely on one source."""

from __future__ import annotations

import math
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any


class Clock:
    """Wall-clock epoch seconds, strictly increasing within the process.

    Two resources created in the same microsecond still get distinct, ordered creation times,
    which keeps CreationTime sorting stable and meaningful.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0

    def now(self) -> float:
        with self._lock:
            current = max(round(time.time(), 6), round(self._last + 1e-6, 6))
            self._last = current
            return current

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex


def parse_timestamp(value: Any) -> datetime | None:
    """Epoch seconds (what the json protocol sends) or ISO-8601; None when neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 253402300799:
            return None
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
