"""A stream fed part by part from another thread, for `ObjectStore.put_stream`: an object can be
stored while its parts are still being made (batch transform writes an output as its answers
arrive), and nothing of it is stored if the producer gives up."""

from __future__ import annotations

import queue


class PartsStream:
    """`write` parts from one thread, `end()` or `fail()` once; `read` (the store's, on another
    thread) blocks until a part comes. After `fail(error)` reads raise `error`, so
    `put_stream` stops and keeps nothing."""

    def __init__(self) -> None:
        self._parts: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
        self._current = memoryview(b"")

    def write(self, part: bytes) -> None:
        if part:
            self._parts.put(part)

    def end(self) -> None:
        self._parts.put(None)

    def fail(self, error: BaseException) -> None:
        self._parts.put(error)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            pieces = []
            while some := self.read(1 << 30):
                pieces.append(some)
            return b"".join(pieces)
        while not self._current:
            part = self._parts.get()
            if part is None or isinstance(part, BaseException):
                self._parts.put(part)  # every later read sees the same end
                if part is None:
                    return b""
                raise part
            self._current = memoryview(part)
        piece = self._current[:size]
        self._current = self._current[size:]
        return piece.tobytes()
