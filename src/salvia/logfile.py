"""Job logs on disk: one file per log stream, one JSON object per line:
`{"timestamp": <epoch milliseconds>, "message": "<line>"}`.

Written by the instance launcher (so logs keep flowing while the server restarts), read by the
CloudWatch Logs API and `salvia logs`. Streams live under `<home>/logs/<group>/<stream>.jsonl`,
with the group's slashes kept as directories (`aws/sagemaker/TrainingJobs/<job>/algo-1-<ts>`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class LogEvent:
    timestamp: int  # epoch milliseconds
    message: str
    offset: int  # byte offset of the line in its file: a stable position for paging
    end: int = 0  # byte offset just past the line: where the next read starts


def stream_path(logs_root: Path, group: str, stream: str) -> Path:
    return logs_root / group.strip("/") / (stream + SUFFIX)


def append(out: IO[bytes], message: str, timestamp_ms: int | None = None) -> None:
    """Append one event and flush, so readers see whole lines only."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    out.write(orjson.dumps({"timestamp": ts, "message": message}) + b"\n")
    out.flush()


def read(path: Path, start_offset: int = 0) -> Iterator[LogEvent]:
    """Events from `start_offset` on; a partly written last line is left for the next read."""
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        fh.seek(start_offset)
        offset = start_offset
        for line in fh:
            if not line.endswith(b"\n"):
                return
            try:
                record = orjson.loads(line)
                yield LogEvent(
                    int(record["timestamp"]), str(record["message"]), offset, offset + len(line)
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # a damaged line is skipped, never fatal to reading the rest
            offset += len(line)


class Mirror:
    """Copies a process's plain output file into a log stream a whole line at a time, so the
    Logs API, the SDK's `logs=True` and Studio show it. How far it got is kept beside the
    output, so a restarted server goes on from there."""

    def __init__(self, source: Path, stream: Path) -> None:
        self.source = source
        self.stream = stream
        self.mark = source.with_suffix(".mirrored")
        try:
            self.offset = int(self.mark.read_text())
        except (OSError, ValueError):
            self.offset = 0

    def copy(self, final: bool = False) -> None:
        """What was written since the last copy (up to its last newline unless `final`)."""
        try:
            size = self.source.stat().st_size
        except OSError:
            return
        if size <= self.offset:
            return
        with self.source.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        complete = data if final else data[: data.rfind(b"\n") + 1]
        if not complete:
            return
        self.stream.parent.mkdir(parents=True, exist_ok=True)
        with self.stream.open("ab") as out:
            for line in complete.decode("utf-8", "replace").splitlines():
                append(out, line)
        self.offset += len(complete)
        self.mark.write_text(str(self.offset))
