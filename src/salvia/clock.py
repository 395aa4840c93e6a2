"""Time and ids come from here, so tests and the reconciler can rely on one source."""

from __future__ import annotations

import threading
import time
import uuid


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
