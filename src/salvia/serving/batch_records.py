"""How batch transform cuts an input object into requests and puts the answers back together:
`SplitType`, `BatchStrategy` with `MaxPayloadInMB`, `DataProcessing` (`InputFilter`,
`JoinSource`, `OutputFilter`) and `AssembleWith`, as SageMaker documents them.

Two paths. Without data processing the object is cut at line (or RecordIO) boundaries into
payloads of at most `MaxPayloadInMB` and the answers are concatenated: no record is parsed, so
a million-row file costs little more than its bytes. With data processing each record is parsed
(CSV rows as arrays, JSON as JSON), filtered, sent in batches, and each answer is split back into
one output per record to be joined and filtered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from salvia.serving.jsonpath import JsonPathError, compile_path


class RecordError(Exception):
    """A record the job cannot process; the message names what is wrong with it."""


@dataclass(frozen=True)
class Batch:
    payload: bytes
    first: int  # the 0-based position of its first record in the object
    records: list[bytes]  # its records, when they were split one by one (else empty)
    sources: list[bytes] | None = None  # the records before InputFilter, for JoinSource


@dataclass(frozen=True)
class Processing:
    """`DataProcessing`, compiled: None where the request leaves the default `$`."""

    input_filter: Callable[[Any], Any] | None
    output_filter: Callable[[Any], Any] | None
    join_input: bool

    @classmethod
    def of(cls, data_processing: dict[str, Any] | None) -> Processing:
        spec = data_processing or {}

        def path(member: str) -> Callable[[Any], Any] | None:
            text = (spec.get(member) or "$").strip()
            if text == "$":
                return None
            try:
                return compile_path(text)
            except JsonPathError as error:
                raise ValueError(f"DataProcessing.{member}: {error}") from None

        return cls(path("InputFilter"), path("OutputFilter"), spec.get("JoinSource") == "Input")

    @property
    def active(self) -> bool:
        return bool(self.input_filter or self.output_filter or self.join_input)


# ------------------------------------------------------------------------------------ splitting


def split_records(data: bytes, split_type: str) -> list[bytes]:
    """The object's records: its lines (`Line`, empty lines skipped), its RecordIO records, or
    the whole object (`None`)."""
    if split_type == "Line":
        return [line for line in data.split(b"\n") if line.strip()]
    if split_type == "RecordIO":
        return list(_recordio_frames(data))
    return [data]


def _recordio_frames(data: bytes) -> Iterator[bytes]:
    """Each RecordIO record with its framing, so that concatenated records stay valid RecordIO."""
    import struct

    position = 0
    while position + 8 <= len(data):
        magic, length = struct.unpack_from("<II", data, position)
        if magic != 0xCED7230A:
            raise RecordError(f"Invalid RecordIO magic number at byte {position}.")
        size = 8 + (length & ((1 << 29) - 1))
        end = position + size + (-size % 4)
        yield data[position:end]
        position = end


def line_chunks(data: bytes, limit: int, first: int = 0) -> Generator[Batch, None, int]:
    """`Line` + `MultiRecord` without data processing: cut at the last newline under `limit`
    bytes (0: no limit) without looking at the records in between. `first`: the position of
    `data`'s first record in its object; returns the position after its last."""
    start, size = 0, len(data)
    while start < size:
        if limit <= 0 or size - start <= limit:
            end = size
        else:
            end = data.rfind(b"\n", start, start + limit) + 1
            if end <= start:
                raise RecordError(_too_large(first, limit))
        chunk = data[start:end] if start or end < size else data
        if not chunk.isspace():  # (strip() would copy the megabytes to say the same)
            yield Batch(chunk, first, [])
        first += chunk.count(b"\n")
        start = end
    return first


def read_line_chunks(read: Callable[[int], bytes], limit: int, target: int = 0) -> Iterator[Batch]:
    """`line_chunks` of a stream, read a payload at a time: the first request can go out while
    the rest of the object is still unread. `target`: the payloads' size, if less than
    `limit`."""
    if limit <= 0:
        yield from line_chunks(read(-1), limit)
        return
    size = min(target or limit, limit)
    pending, first = b"", 0  # pending: the start of a line the last read cut
    while block := _read_up_to(read, max(size - len(pending), 1)):
        cut = block.rfind(b"\n") + 1
        if cut == 0:  # a line longer than the reads so far
            pending += block
            if len(pending) >= limit:
                raise RecordError(_too_large(first, limit))
            size = limit  # read on to the line's end
            continue
        if pending or cut < len(block):  # (one copy, not two)
            whole = b"".join((pending, memoryview(block)[:cut]))
        else:
            whole = block
        first = yield from line_chunks(whole, limit, first)  # one chunk: it fits
        pending = block[cut:]
        size = min(target or limit, limit)
    yield from line_chunks(pending, limit, first)  # the last line may lack its newline


def even_payloads(size: int, limit: int, lanes: int) -> int:
    """A payload size under `limit` that cuts `size` bytes into a multiple of `lanes` payloads,
    so that the lanes sending them finish together (the last payload of a full-size cut can
    leave all but one lane idle)."""
    if limit <= 0 or size <= limit:
        return limit
    count = -(-size // limit)
    count += -count % lanes
    return min(limit, size * 101 // (100 * count) + 1)  # room for the lines cut at the ends


def _read_up_to(read: Callable[[int], bytes], size: int) -> bytes:
    """`size` bytes, or fewer only at the end (a stream may answer a read with less)."""
    block = read(size)
    if not block or len(block) == size:
        return block
    pieces = [block]
    while size := size - len(block):
        block = read(size)
        if not block:
            break
        pieces.append(block)
    return b"".join(pieces)


def batches(records: list[bytes], strategy: str, limit: int, separator: bytes) -> Iterator[Batch]:
    """`SingleRecord`: one record per request; `MultiRecord`: as many as fit under `limit`."""
    if strategy != "MultiRecord":
        for index, record in enumerate(records):
            if limit and len(record) > limit:
                raise RecordError(_too_large(index, limit))
            yield Batch(record, index, [record])
        return
    group: list[bytes] = []
    size, first = 0, 0
    for index, record in enumerate(records):
        if limit and len(record) > limit:
            raise RecordError(_too_large(index, limit))
        extra = len(record) + (len(separator) if group else 0)
        if group and limit and size + extra > limit:
            yield Batch(separator.join(group) + separator, first, group)
            group, size, first = [], 0, index
            extra = len(record)
        group.append(record)
        size += extra
    if group:
        yield Batch(separator.join(group) + separator, first, group)


def _too_large(index: int, limit: int) -> str:
    return f"Record {index + 1} is larger than MaxPayloadInMB ({limit} bytes)."


# ------------------------------------------------------------------------ records as JSON values


def is_csv(content_type: str | None) -> bool:
    return "csv" in (content_type or "").lower()


def parse_record(record: bytes, csv_rows: bool) -> Any:
    """A CSV row is an array of its fields (numbers where they are numbers); JSON is JSON."""
    text = record.decode("utf-8").strip()
    if csv_rows:
        return [_number(field) for field in text.split(",")]
    try:
        return json.loads(text)
    except ValueError as error:
        raise RecordError(f"A record is not valid JSON: {error}") from None


def render_record(value: Any, csv_rows: bool) -> bytes:
    if csv_rows:
        items = value if isinstance(value, list) else [value]
        return ",".join(_csv_field(item) for item in items).encode()
    return json.dumps(value, separators=(",", ":")).encode()


def _number(field: str) -> Any:
    stripped = field.strip()
    try:
        return int(stripped)
    except ValueError:
        pass
    try:
        return float(stripped)
    except ValueError:
        return stripped


def _csv_field(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def filter_input(record: bytes, processing: Processing, csv_rows: bool) -> bytes:
    if processing.input_filter is None:
        return record
    try:
        selected = processing.input_filter(parse_record(record, csv_rows))
    except JsonPathError as error:
        raise RecordError(f"InputFilter: {error}") from None
    return render_record(selected, csv_rows)


def split_output(body: bytes, content_type: str, count: int) -> list[bytes]:
    """One output per record of a batch: its lines, or the items of a JSON array (or of the one
    array a JSON object holds, like `{"predictions": [...]}`)."""
    if count == 1:
        return [body.strip()]
    if "json" in content_type and "jsonlines" not in content_type:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and len(parsed) == 1:
            parsed = next(iter(parsed.values()))
        if isinstance(parsed, list) and len(parsed) == count:
            return [json.dumps(item, separators=(",", ":")).encode() for item in parsed]
    lines = [line for line in body.split(b"\n") if line.strip()]
    if len(lines) != count:
        raise RecordError(
            f"The model answered {len(lines)} records for a batch of {count}: joining and "
            "output filters need one output per input record."
        )
    return lines


def join_output(
    record: bytes, output: bytes, processing: Processing, csv_input: bool, csv_output: bool
) -> bytes:
    """`JoinSource: Input` and `OutputFilter` for one record."""
    value: Any
    if processing.join_input:
        if csv_input:
            joined = record.rstrip(b"\r\n") + b"," + output
            if processing.output_filter is None:
                return joined
            value = parse_record(joined, True)
        else:
            source = parse_record(record, False)
            result = _json_or_text(output)
            if isinstance(source, dict):
                value = {**source, "SageMakerOutput": result}
            else:
                value = {"SageMakerInput": source, "SageMakerOutput": result}
        csv_result = csv_input
    else:
        if processing.output_filter is None:
            return output
        value = parse_record(output, csv_output) if csv_output else _json_or_text(output)
        csv_result = csv_output
    if processing.output_filter is not None:
        try:
            value = processing.output_filter(value)
        except JsonPathError as error:
            raise RecordError(f"OutputFilter: {error}") from None
    return render_record(value, csv_result)


def _json_or_text(data: bytes) -> Any:
    text = data.decode("utf-8").strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


def assembled(part: bytes, by_line: bool) -> list[bytes]:
    """`AssembleWith` for one answer, as the pieces to write: `Line` ends every output record
    with a newline (and drops an answer with none); `None` concatenates the answers as they
    are."""
    if not by_line:
        return [part]
    end = len(part)
    while end and part[end - 1] == 0x0A:  # (rstrip() would copy the megabytes)
        end -= 1
    if not end:
        return []
    if end == len(part):
        return [part, b"\n"]
    return [part] if end == len(part) - 1 else [part[:end], b"\n"]
