"""CloudWatch Logs, the subset that SDKs use to tail job logs, served from the log files on disk.

Groups and streams live nowhere but in the files of `salvia.logfile`: a group exists once one of
its streams has a file. SageMaker's groups are `/aws/sagemaker/<Kind>` (`/aws/sagemaker/Endpoints/
<endpoint>` for endpoints), and their streams are named `<job or variant>/<instance>`, so under
`aws/sagemaker/` the group is told from the stream by that layout; anywhere else a group's streams
are the files directly in its directory.

`GetLogEvents` tokens are positions in a stream's file: `f/<byte offset>` reads on from there,
`b/<byte offset>` reads back from there. Files only grow, so a token stays good while a job logs,
and a forward token that comes back unchanged means there are no new events.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from salvia.config import Settings
from salvia.errors import InvalidParameterException, ResourceNotFoundException
from salvia.logfile import SUFFIX, LogEvent
from salvia.resources.registry import operation

MAX_EVENTS = 10_000
MAX_RESPONSE_BYTES = 1_048_576
EVENT_OVERHEAD = 26  # bytes CloudWatch counts per event on top of its message
_BLOCK = 64 * 1024
_PER_RESOURCE_GROUPS = {"Endpoints", "InferenceComponents"}  # /aws/sagemaker/<Kind>/<name>
_TOKEN = re.compile(r"([fb])/(\d{1,56})")
_PATTERN_TERM = re.compile(r'([?-]?)"((?:[^"\\]|\\.)*)"|(\S+)')
GROUP_NOT_FOUND = "The specified log group does not exist."
STREAM_NOT_FOUND = "The specified log stream does not exist."


@dataclass(frozen=True, slots=True)
class _Line:
    start: int
    end: int
    event: LogEvent | None  # None for a damaged line, which is skipped


@dataclass(frozen=True, slots=True)
class _Stream:
    name: str
    path: Path


# --- where groups and streams are on disk ---------------------------------------------------


def _group_depth(parts: tuple[str, ...]) -> int:
    """How many leading parts of a stream file's path (under the logs root) name its group."""
    if parts[:2] == ("aws", "sagemaker") and len(parts) > 3:
        return 4 if parts[2] in _PER_RESOURCE_GROUPS and len(parts) > 4 else 3
    return len(parts) - 1


def _safe_parts(name: str) -> tuple[str, ...] | None:
    parts = tuple(name.split("/"))
    if any(part in {"", ".", ".."} or "\x00" in part or "\\" in part for part in parts):
        return None
    return parts


def _group_parts(name: str) -> tuple[str, ...] | None:
    return _safe_parts(name.strip("/"))


def _group_display(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def _parse(line: bytes, start: int) -> LogEvent | None:
    try:
        record = orjson.loads(line)
        return LogEvent(int(record["timestamp"]), str(record["message"]), start)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _forward(path: Path, offset: int) -> Iterator[_Line]:
    """Complete lines from `offset` on; a partly written last line waits for the next read."""
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith(b"\n"):
                return
            yield _Line(offset, offset + len(line), _parse(line, offset))
            offset += len(line)


def _backward(path: Path, end: int) -> Iterator[_Line]:
    """Lines ending at or before `end` (a line boundary), last first."""
    with path.open("rb") as fh:
        pos, buf = end, b""
        while True:
            cut = buf.rfind(b"\n", 0, len(buf) - 1) if buf else -1
            while cut < 0 and pos > 0:
                size = min(_BLOCK, pos)
                pos -= size
                fh.seek(pos)
                buf = fh.read(size) + buf
                cut = buf.rfind(b"\n", 0, len(buf) - 1)
            if not buf:
                return
            line, start = buf[cut + 1 :], pos + cut + 1
            yield _Line(start, start + len(line), _parse(line, start))
            buf = buf[: cut + 1]


def _complete_end(path: Path) -> int:
    """Where the last complete line of the file ends."""
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        pos = size
        while pos > 0:
            step = min(_BLOCK, pos)
            fh.seek(pos - step)
            found = fh.read(step).rfind(b"\n")
            if found >= 0:
                return pos - step + found + 1
            pos -= step
    return 0


def _first_event(path: Path) -> LogEvent | None:
    return next((line.event for line in _forward(path, 0) if line.event), None)


def _last_event(path: Path) -> LogEvent | None:
    return next((line.event for line in _backward(path, _complete_end(path)) if line.event), None)


# --- tokens and filters ---------------------------------------------------------------------


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _encode_token(key: list[Any], fingerprint: str) -> str:
    payload = orjson.dumps({"k": key, "q": fingerprint})
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode_token(token: str, fingerprint: str, *types: type) -> list[Any]:
    """The key a token carries, checked to be a list of scalars of `types`."""
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        data = None
    key = data.get("k") if isinstance(data, dict) and data.get("q") == fingerprint else None
    if (
        isinstance(key, list)
        and len(key) == len(types)
        and all(isinstance(item, kind) for item, kind in zip(key, types, strict=True))
    ):
        return key
    raise InvalidParameterException("The specified nextToken is invalid.")


def _position_token(direction: str, offset: int) -> str:
    return f"{direction}/{offset:056d}"


def _in_range(event: LogEvent, start: int | None, end: int | None) -> bool:
    # CloudWatch's range: startTime included, endTime excluded
    return (start is None or event.timestamp >= start) and (end is None or event.timestamp < end)


def _event_size(event: LogEvent) -> int:
    return len(event.message.encode()) + EVENT_OVERHEAD


def compile_filter_pattern(pattern: str | None) -> Callable[[str], bool]:
    """CloudWatch's pattern syntax for unstructured logs: terms and "quoted phrases" that must all
    appear (case-sensitive), `-term` that must not, or only `?term`s, any one of which must."""
    text = (pattern or "").strip()
    if not text or text == '""':
        return lambda message: True

    def unsupported(what: str) -> InvalidParameterException:
        return InvalidParameterException(
            f"filterPattern '{text[:200]}' uses {what}, which Salvia does not support; use terms, "
            '"quoted phrases", -term exclusions or ?term alternatives.'
        )

    if text[0] == "{":
        raise unsupported("a JSON pattern")
    if text[0] == "[":
        raise unsupported("a space-delimited pattern")
    if text[0] == "%" and text[-1] == "%" and len(text) > 1:
        raise unsupported("a regular expression")
    required: list[str] = []
    excluded: list[str] = []
    alternatives: list[str] = []
    for match in _PATTERN_TERM.finditer(text):
        sign, quoted, bare = match.groups()
        if bare is None:
            term = re.sub(r"\\(.)", r"\1", quoted)
        else:
            sign, term = (bare[0], bare[1:]) if bare[0] in "?-" else ("", bare)
            if '"' in term:
                raise unsupported("an unbalanced quote")
        if not term:
            raise unsupported(f"an empty term after '{sign}'")
        {"": required, "-": excluded, "?": alternatives}[sign].append(term)
    if alternatives and (required or excluded):
        raise unsupported("?term alternatives mixed with other terms")
    if alternatives:
        return lambda message: any(term in message for term in alternatives)
    return lambda message: (
        all(term in message for term in required) and not any(term in message for term in excluded)
    )


# --- the operations -------------------------------------------------------------------------


class CloudWatchLogs:
    """DescribeLogGroups, DescribeLogStreams, GetLogEvents and FilterLogEvents over the files
    under `<home>/logs`. Stateless, so safe to call from any thread while launchers append."""

    def __init__(self, settings: Settings, logs_root: Path | None = None) -> None:
        self.settings = settings
        self.root = logs_root if logs_root is not None else settings.home / "logs"

    def _arn(self, group: str) -> str:
        return f"arn:aws:logs:{self.settings.region}:{self.settings.account_id}:log-group:{group}"

    def _group_of(self, request: dict[str, Any]) -> tuple[str, ...]:
        """The parts of the requested group, from `logGroupName` or `logGroupIdentifier`."""
        name, identifier = request.get("logGroupName"), request.get("logGroupIdentifier")
        if name and identifier:
            raise InvalidParameterException(
                "LogGroup name and LogGroup ARN are mutually exclusive parameters."
            )
        if identifier:
            head, _, name = identifier.partition(":log-group:")
            name = name.removesuffix(":*") if head.startswith("arn:") else identifier
        if not name:
            raise InvalidParameterException(
                "Either logGroupName or logGroupIdentifier is required."
            )
        parts = _group_parts(name)
        if parts is None:
            raise ResourceNotFoundException(GROUP_NOT_FOUND)
        return parts

    def _streams(self, group: tuple[str, ...], prefix: str = "") -> Iterator[_Stream]:
        """The group's streams whose names start with `prefix`, in no particular order."""
        base = self.root.joinpath(*group)
        search = base
        if "/" in prefix:
            narrowed = _safe_parts(prefix.rsplit("/", 1)[0])
            if narrowed is None:
                return
            search = base.joinpath(*narrowed)
        if not search.is_dir():
            return
        for path in search.rglob("*" + SUFFIX):
            parts = path.relative_to(self.root).parts
            if _group_depth(parts) != len(group) or not path.is_file():
                continue
            name = "/".join(parts[len(group) :])[: -len(SUFFIX)]
            if name.startswith(prefix):
                yield _Stream(name, path)

    def _require_group(self, group: tuple[str, ...]) -> None:
        if next(self._streams(group), None) is None:
            raise ResourceNotFoundException(GROUP_NOT_FOUND)

    def _stream(self, group: tuple[str, ...], name: str) -> _Stream:
        parts = _safe_parts(name)
        if parts is not None:
            path = self.root.joinpath(*group, *parts[:-1], parts[-1] + SUFFIX)
            full = path.relative_to(self.root).parts
            if _group_depth(full) == len(group) and path.is_file():
                return _Stream(name, path)
        self._require_group(group)
        raise ResourceNotFoundException(STREAM_NOT_FOUND)

    def _describe_stream(self, group: tuple[str, ...], stream: _Stream) -> dict[str, Any]:
        stat = stream.path.stat()
        first, last = _first_event(stream.path), _last_event(stream.path)
        modified = int(stat.st_mtime * 1000)
        return {
            "logStreamName": stream.name,
            "creationTime": first.timestamp if first else modified,
            "firstEventTimestamp": first.timestamp if first else None,
            "lastEventTimestamp": last.timestamp if last else None,
            "lastIngestionTime": modified,
            "arn": f"{self._arn(_group_display(group))}:log-stream:{stream.name}",
            "storedBytes": 0,  # deprecated by CloudWatch, which answers 0 too
        }

    @operation("DescribeLogGroups")
    def describe_log_groups(self, request: dict[str, Any]) -> dict[str, Any]:
        for member in ("accountIdentifiers", "logGroupIdentifiers"):
            if request.get(member):
                raise InvalidParameterException(f"{member} is not supported by Salvia.")
        prefix, pattern = request.get("logGroupNamePrefix"), request.get("logGroupNamePattern")
        if prefix and pattern:
            raise InvalidParameterException(
                "LogGroup name prefix and LogGroup name pattern are mutually exclusive parameters."
            )
        if request.get("logGroupClass", "STANDARD") != "STANDARD":
            return {"logGroups": []}  # every group here is of the STANDARD class
        groups: dict[str, list[Path]] = {}
        if self.root.is_dir():
            for path in self.root.rglob("*" + SUFFIX):
                parts = path.relative_to(self.root).parts
                if path.is_file():
                    name = _group_display(parts[: _group_depth(parts)])
                    groups.setdefault(name, []).append(path)
        names = sorted(
            name
            for name in groups
            if name.startswith(prefix or "") and (pattern or "").lower() in name.lower()
        )
        fingerprint = _fingerprint("groups", prefix, pattern)
        token = request.get("nextToken")
        if token:
            (after,) = _decode_token(token, fingerprint, str)
            names = [name for name in names if name > after]
        limit = request.get("limit", 50)
        page = names[:limit]
        response: dict[str, Any] = {
            "logGroups": [self._describe_group(name, groups[name]) for name in page]
        }
        if len(names) > limit:
            response["nextToken"] = _encode_token([page[-1]], fingerprint)
        return response

    def _describe_group(self, name: str, paths: list[Path]) -> dict[str, Any]:
        created = []
        for path in paths:
            first = _first_event(path)
            created.append(first.timestamp if first else int(path.stat().st_mtime * 1000))
        arn = self._arn(name)
        return {
            "logGroupName": name,
            "creationTime": min(created),
            "metricFilterCount": 0,
            "arn": arn + ":*",
            "logGroupArn": arn,
            "storedBytes": sum(path.stat().st_size for path in paths),
            "logGroupClass": "STANDARD",
        }

    @operation("DescribeLogStreams")
    def describe_log_streams(self, request: dict[str, Any]) -> dict[str, Any]:
        group = self._group_of(request)
        prefix = request.get("logStreamNamePrefix") or ""
        order_by = request.get("orderBy", "LogStreamName")
        if order_by == "LastEventTime" and prefix:
            raise InvalidParameterException(
                "Cannot order by LastEventTime with a logStreamNamePrefix."
            )
        self._require_group(group)
        streams = [self._describe_stream(group, stream) for stream in self._streams(group, prefix)]
        descending = bool(request.get("descending", False))

        def key(item: dict[str, Any]) -> list[Any]:
            if order_by == "LastEventTime":
                return [item["lastEventTimestamp"] or 0, item["logStreamName"]]
            return [item["logStreamName"]]

        streams.sort(key=key, reverse=descending)
        fingerprint = _fingerprint("streams", group, prefix, order_by, descending)
        token = request.get("nextToken")
        if token:
            types = (int, str) if order_by == "LastEventTime" else (str,)
            after = _decode_token(token, fingerprint, *types)
            streams = [s for s in streams if (key(s) < after if descending else key(s) > after)]
        limit = request.get("limit", 50)
        response: dict[str, Any] = {"logStreams": streams[:limit]}
        # Only when more remain: the SageMaker SDK re-asks for as long as a token comes back
        if len(streams) > limit:
            response["nextToken"] = _encode_token(key(streams[limit - 1]), fingerprint)
        return response

    @operation("GetLogEvents")
    def get_log_events(self, request: dict[str, Any]) -> dict[str, Any]:
        group = self._group_of(request)
        stream = self._stream(group, request["logStreamName"])
        start, end = request.get("startTime"), request.get("endTime")
        limit = request.get("limit", MAX_EVENTS)
        complete = _complete_end(stream.path)
        token = request.get("nextToken")
        if token:
            found = _TOKEN.fullmatch(token)
            if found is None:
                raise InvalidParameterException("The specified nextToken is invalid.")
            direction, offset = found.group(1), min(int(found.group(2)), complete)
        elif request.get("startFromHead"):
            direction, offset = "f", 0
        else:
            direction, offset = "b", complete

        kept: list[_Line] = []
        size = 0
        lines = (
            _forward(stream.path, offset) if direction == "f" else _backward(stream.path, offset)
        )
        reached = offset  # how far the scan got, in its own direction
        for line in lines:
            event = line.event
            if event is not None and _in_range(event, start, end):
                full = len(kept) == limit or (
                    kept and size + _event_size(event) > MAX_RESPONSE_BYTES
                )
                if full:
                    break
                kept.append(line)
                size += _event_size(event)
            reached = line.end if direction == "f" else line.start

        if direction == "f":
            forward, backward = reached, (kept[0].start if kept else offset)
        else:
            kept.reverse()
            forward, backward = (kept[-1].end if kept else offset), reached
        events = [line.event for line in kept if line.event is not None]
        return {
            "events": [
                {"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.timestamp}
                for e in events
            ],
            "nextForwardToken": _position_token("f", forward),
            "nextBackwardToken": _position_token("b", backward),
        }

    @operation("FilterLogEvents")
    def filter_log_events(self, request: dict[str, Any]) -> dict[str, Any]:
        group = self._group_of(request)
        names, prefix = request.get("logStreamNames"), request.get("logStreamNamePrefix")
        if names and prefix:
            raise InvalidParameterException(
                "logStreamNames and logStreamNamePrefix are mutually exclusive parameters."
            )
        if request.get("startFromHead") is False:
            raise InvalidParameterException(
                "startFromHead=false (newest events first) is not supported by Salvia."
            )
        matches = compile_filter_pattern(request.get("filterPattern"))
        start, end = request.get("startTime"), request.get("endTime")
        self._require_group(group)
        if names:
            streams: list[_Stream] = []
            for name in dict.fromkeys(names):
                # as CloudWatch does: a named stream that is not there has no events to find
                with contextlib.suppress(ResourceNotFoundException):
                    streams.append(self._stream(group, name))
        else:
            streams = sorted(self._streams(group, prefix or ""), key=lambda s: s.name)

        found: list[tuple[int, str, int, str]] = []
        for stream in streams:
            for line in _forward(stream.path, 0):
                event = line.event
                if event is not None and _in_range(event, start, end) and matches(event.message):
                    found.append((event.timestamp, stream.name, event.offset, event.message))
        found.sort()
        fingerprint = _fingerprint(
            "filter", group, names, prefix, start, end, request.get("filterPattern")
        )
        token = request.get("nextToken")
        if token:
            after = tuple(_decode_token(token, fingerprint, int, str, int))
            found = [item for item in found if item[:3] > after]
        limit = request.get("limit", MAX_EVENTS)
        page: list[tuple[int, str, int, str]] = []
        size = 0
        for item in found:
            item_size = len(item[3].encode()) + EVENT_OVERHEAD
            if len(page) == limit or (page and size + item_size > MAX_RESPONSE_BYTES):
                break
            page.append(item)
            size += item_size
        response: dict[str, Any] = {
            "events": [
                {
                    "logStreamName": name,
                    "timestamp": timestamp,
                    "message": message,
                    "ingestionTime": timestamp,
                    "eventId": f"{timestamp:015d}{zlib.crc32(name.encode()):010d}{offset:020d}",
                }
                for timestamp, name, offset, message in page
            ],
            "searchedLogStreams": [
                {"logStreamName": stream.name, "searchedCompletely": True} for stream in streams
            ],
        }
        if len(page) < len(found):
            response["nextToken"] = _encode_token(list(page[-1][:3]), fingerprint)
        return response
