"""RecordIO-protobuf, the data format of SageMaker's first-party algorithms.

Framing (MXNet / dmlc-core `RecordIOWriter`): each record is a little-endian uint32 magic
`0xced7230a`, a uint32 whose low 29 bits are the payload length and whose high 3 bits are the
continuation flag (0 whole record, 1 first part, 2 middle part, 3 last part), the payload, and
zero bytes up to a 4-byte boundary. A writer splits a payload wherever the magic number occurs
at a 4-byte-aligned offset inside it (the magic itself is dropped); a reader joins the parts
with the magic put back.

Payload: the protobuf message `aialgs.data.Record` (the SageMaker SDK's `record.proto`):
`features` (1) and `label` (2) are maps from a name (usually "values") to a `Value`, whose oneof
holds a `Float32Tensor` (2), `Float64Tensor` (3) or `Int32Tensor` (7); a tensor has packed
`values` (1), sparse `keys` (2, uint64) and `shape` (3, uint64). The wire encoding is written
here by hand so that no protobuf runtime is needed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from salvia.algorithms.base import AlgorithmError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1

# Value's oneof field numbers and the numpy type of each tensor's values
FLOAT32, FLOAT64, INT32 = 2, 3, 7
_DTYPES: dict[int, np.dtype[Any]] = {
    FLOAT32: np.dtype("<f4"),
    FLOAT64: np.dtype("<f8"),
    INT32: np.dtype("<i4"),
}

Sparse = tuple[np.ndarray, np.ndarray, tuple[int, ...]]  # keys, values, shape


@dataclass
class Tensor:
    """One `Value`: dense when `keys` is empty."""

    values: np.ndarray
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    shape: tuple[int, ...] = ()
    kind: int = FLOAT32  # FLOAT32, FLOAT64 or INT32

    @property
    def sparse(self) -> bool:
        return len(self.keys) > 0 or (len(self.values) == 0 and len(self.shape) > 0)


# ---------------------------------------------------------------------------- framing


def write_record(out: IO[bytes], payload: bytes) -> None:
    """Write one RecordIO record, split where the payload holds the magic (as dmlc does)."""
    length = len(payload)
    if length >= 1 << 29:
        raise ValueError("A RecordIO record holds at most 2**29 - 1 bytes.")
    aligned = length - length % 4
    words = np.frombuffer(payload[:aligned], dtype="<u4")
    hits = (np.flatnonzero(words == MAGIC) * 4).tolist()
    start = 0
    for position in hits:
        flag = 1 if start == 0 else 2
        out.write(_MAGIC_BYTES + struct.pack("<I", (flag << 29) | (position - start)))
        out.write(payload[start:position])
        start = position + 4
    flag = 3 if hits else 0
    out.write(_MAGIC_BYTES + struct.pack("<I", (flag << 29) | (length - start)))
    out.write(payload[start:])
    out.write(b"\0" * (-length % 4))


def read_records(source: bytes | bytearray | memoryview | IO[bytes]) -> Iterator[bytes]:
    """The payloads of the RecordIO records in a byte string or a binary stream."""
    stream: IO[bytes] = (
        io.BytesIO(bytes(source)) if isinstance(source, bytes | bytearray | memoryview) else source
    )
    parts: list[bytes] = []
    while True:
        header = stream.read(8)
        if not header:
            if parts:
                raise AlgorithmError("RecordIO data ends inside a multi-part record.")
            return
        if len(header) < 8:
            raise AlgorithmError("RecordIO data ends inside a record header.")
        magic, word = struct.unpack("<II", header)
        if magic != MAGIC:
            raise AlgorithmError(
                f"Not RecordIO data: expected the magic number 0x{MAGIC:08x}, found 0x{magic:08x}."
            )
        flag, length = word >> 29, word & _LENGTH_MASK
        body = stream.read(length + (-length % 4))
        if len(body) < length:
            raise AlgorithmError("RecordIO data ends inside a record.")
        parts.append(body[:length])
        if flag in (0, 3):
            yield _MAGIC_BYTES.join(parts)
            parts = []


# ----------------------------------------------------------------------- protobuf wire


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 values are sign-extended to 64 bits
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varints(values: Iterable[int]) -> bytes:
    return b"".join(_varint(int(v)) for v in values)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise AlgorithmError("A protobuf record is truncated.")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise AlgorithmError("A protobuf varint is too long.")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): an int for varints, bytes for the rest. Tags and
    lengths under 128 (nearly all of them) are read inline: a data set is millions of fields."""
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        value: Any
        if wire == 2:
            size = data[pos] if pos < end else 0x80
            if size < 0x80:
                pos += 1
            else:
                size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise AlgorithmError(f"Unsupported protobuf wire type {wire}.")
        if pos > end:
            raise AlgorithmError("A protobuf record is truncated.")
        yield number, wire, value


def _unpack_varints(data: bytes) -> list[int]:
    if data.isascii():  # every byte under 128: one byte per value
        return list(data)
    values, pos = [], 0
    while pos < len(data):
        value, pos = _read_varint(data, pos)
        values.append(value)
    return values


def _encode_tensor(tensor: Tensor) -> bytes:
    dtype = _DTYPES[tensor.kind]
    values = np.ascontiguousarray(tensor.values, dtype=dtype)
    body = b""
    if values.size:
        packed = _varints(values.tolist()) if tensor.kind == INT32 else values.tobytes()
        body += _field(1, packed)
    if len(tensor.keys):
        body += _field(2, _varints(np.asarray(tensor.keys, dtype=np.uint64).tolist()))
    if tensor.shape:
        body += _field(3, _varints(tensor.shape))
    return _field(tensor.kind, body)  # a Value with its oneof set


def _decode_tensor(value_message: bytes) -> Tensor:
    for kind, wire, tensor_bytes in _fields(value_message):
        if kind not in _DTYPES or wire != 2:
            continue  # Bytes values and unknown fields are not numeric features
        dtype = _DTYPES[kind]
        values: list[Any] = []
        chunks: list[bytes] = []
        keys: list[int] = []
        shape: list[int] = []
        for number, field_wire, item in _fields(tensor_bytes):
            if number == 1:
                if kind == INT32:
                    raw = _unpack_varints(item) if field_wire == 2 else [item]
                    values.extend(v - (1 << 64) if v >= 1 << 63 else v for v in raw)
                else:
                    chunks.append(item)  # packed or one value: fixed-width bytes either way
            elif number in (2, 3):
                target = keys if number == 2 else shape
                target.extend(_unpack_varints(item) if field_wire == 2 else [item])
        array = (
            np.asarray(values, dtype=np.int64).astype(dtype)
            if kind == INT32
            else np.frombuffer(b"".join(chunks), dtype=dtype)
        )
        return Tensor(array, np.asarray(keys, dtype=np.uint64), tuple(shape), kind)
    raise AlgorithmError("A record's value holds no Float32, Float64 or Int32 tensor.")


def encode_message(features: Mapping[str, Tensor], label: Mapping[str, Tensor]) -> bytes:
    """A `Record` with the given feature and label maps."""
    out = b""
    for number, mapping in ((1, features), (2, label)):
        for name, tensor in mapping.items():
            entry = _field(1, name.encode()) + _field(2, _encode_tensor(tensor))
            out += _field(number, entry)
    return out


def decode_message(payload: bytes) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The feature and label maps of a `Record`."""
    maps: tuple[dict[str, Tensor], dict[str, Tensor]] = ({}, {})
    for number, wire, entry in _fields(bytes(payload)):
        if number not in (1, 2) or wire != 2:
            continue  # uid, metadata, configuration
        name, tensor = "", None
        for entry_number, _, item in _fields(entry):
            if entry_number == 1:
                name = item.decode("utf-8")
            elif entry_number == 2:
                tensor = _decode_tensor(item)
        if tensor is not None:
            maps[number - 1][name] = tensor
    return maps


# --------------------------------------------------------------------- single records


def _kind_of(dtype: np.dtype[Any]) -> int:
    if np.issubdtype(dtype, np.integer):
        return INT32
    return FLOAT32 if dtype == np.float32 else FLOAT64


def encode_record(
    features: np.ndarray | Sequence[float] | tuple[Any, Any, Any], label: float | None = None
) -> bytes:
    """A `Record` with features under "values" (a dense row, or sparse `(keys, values, shape)`)
    and an optional scalar label; tensor types follow the numpy dtype as the SageMaker SDK's
    do (float32 → Float32Tensor, float64 → Float64Tensor, integers → Int32Tensor)."""
    if isinstance(features, tuple) and len(features) == 3:
        keys, values, shape = features
        array = np.asarray(values)
        tensor = Tensor(
            array.ravel(),
            np.asarray(keys, dtype=np.uint64).ravel(),
            tuple(int(s) for s in np.atleast_1d(shape)),
            _kind_of(array.dtype),
        )
    else:
        array = np.asarray(features)
        tensor = Tensor(array.ravel(), kind=_kind_of(array.dtype))
    labels = {}
    if label is not None:
        label_array = np.asarray([label])
        labels["values"] = Tensor(label_array, kind=_kind_of(label_array.dtype))
    return encode_message({"values": tensor}, labels)


def decode_record(payload: bytes) -> tuple[np.ndarray | Sparse, float | None]:
    """The "values" features (dense array, or sparse `(keys, values, shape)`) and the scalar
    label (None when the record has none)."""
    features, labels = decode_message(payload)
    tensor = features.get("values") or next(iter(features.values()), None)
    if tensor is None:
        raise AlgorithmError("A record has no features.")
    decoded: np.ndarray | Sparse = tensor.values
    if tensor.sparse:
        decoded = (tensor.keys, tensor.values, tensor.shape)
    label_tensor = labels.get("values") or next(iter(labels.values()), None)
    label = None
    if label_tensor is not None and label_tensor.values.size:
        label = float(label_tensor.values[0])
    return decoded, label


# --------------------------------------------------------------------------- data sets


def read_dataset(files: Iterable[Path | str]) -> tuple[Any, np.ndarray | None]:
    """All records of the files: a dense matrix (or a scipy CSR matrix when the records are
    sparse) whose dtype follows the tensor type, and the labels (None when no record has one)."""
    payloads: list[bytes] = []
    for path in files:
        with open(path, "rb") as stream:
            payloads.extend(read_records(stream))
    return _read_payloads(payloads)


def read_dataset_bytes(body: bytes) -> tuple[Any, np.ndarray | None]:
    """Like `read_dataset`, for records held in memory (an inference request)."""
    return _read_payloads(list(read_records(body)))


def _read_payloads(payloads: list[bytes]) -> tuple[Any, np.ndarray | None]:
    fast = _float32_rows(payloads)
    if fast is not None:
        return fast
    return _assemble([decode_record(payload) for payload in payloads])


def _length_delimited(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, start, stop) of the length-delimited field at `pos`; (-1, ...) when the
    field is anything else."""
    tag = data[pos]
    if tag >= 0x80 or tag & 7 != 2:
        return -1, pos, pos
    size = data[pos + 1] if pos + 1 < end else 0x80
    if size < 0x80:
        start = pos + 2
    else:
        size, start = _read_varint(data, pos + 1)
    return tag >> 3, start, start + size


def _float32_rows(payloads: list[bytes]) -> tuple[Any, np.ndarray | None] | None:
    """The common case read at a few microseconds a record: every record holds one Float32
    features tensor (dense, or sparse with keys and a shape) and at most one Float32 label,
    laid out as the SageMaker SDK writes them. None when any record is otherwise: the general
    reader then decodes them one by one."""
    from scipy import sparse

    values = bytearray()
    keys: list[int] = []
    indptr = [0]
    labels = bytearray()
    labelled = width = 0
    dense_width = -1
    any_sparse = False
    for payload in payloads:
        end, pos = len(payload), 0
        features = label = None
        while pos < end:
            number, start, stop = _length_delimited(payload, pos, end)
            if number not in (1, 2) or stop > end:
                return None
            # a map entry: the name (field 1), then the Value (field 2) holding the tensor
            name_number, _, name_stop = _length_delimited(payload, start, stop)
            value_number, value_start, value_stop = _length_delimited(payload, name_stop, stop)
            if name_number != 1 or value_number != 2 or value_stop != stop:
                return None
            kind, tensor_start, tensor_stop = _length_delimited(payload, value_start, stop)
            if kind != FLOAT32 or tensor_stop != stop:
                return None
            if number == 1:
                if features is not None:
                    return None
                features = (tensor_start, tensor_stop)
            else:
                label = (tensor_start, tensor_stop)
            pos = stop
        if features is None:
            return None
        row_values = row_keys = row_shape = b""
        pos, stop = features
        while pos < stop:
            field, start, field_stop = _length_delimited(payload, pos, stop)
            if field == 1:
                row_values = payload[start:field_stop]
            elif field == 2:
                row_keys = payload[start:field_stop]
            elif field == 3:
                row_shape = payload[start:field_stop]
            else:
                return None
            pos = field_stop
        count = len(row_values) // 4
        if row_keys or row_shape:
            row_key_list = _unpack_varints(row_keys)
            shape = _unpack_varints(row_shape)
            if len(row_key_list) != count or len(shape) > 1:
                return None
            width = max(width, shape[0] if shape else 0, max(row_key_list, default=-1) + 1)
            keys.extend(row_key_list)
            any_sparse = True
        else:
            if dense_width not in (-1, count):
                return None  # dense rows of different lengths: the general reader says so
            dense_width = count
            width = max(width, count)
            keys.extend(range(count))
        values += row_values
        indptr.append(len(keys))
        if label is not None:
            label_field, start, label_stop = _length_delimited(payload, label[0], label[1])
            if label_field != 1 or label_stop - start < 4:
                return None
            labels += payload[start : start + 4]
            labelled += 1
    if not payloads or labelled not in (0, len(payloads)):
        return None
    data = np.frombuffer(bytes(values), dtype="<f4")
    label_array = np.frombuffer(bytes(labels), dtype="<f4").astype(np.float64) if labelled else None
    if not any_sparse:  # dense records: a dense matrix, as the general reader makes
        return data.reshape(len(payloads), dense_width), label_array
    matrix = sparse.csr_matrix(
        (data, np.asarray(keys, dtype=np.int64), np.asarray(indptr)),
        shape=(len(payloads), width),
    )
    return matrix, label_array


def _assemble(rows: list[tuple[np.ndarray | Sparse, float | None]]) -> tuple[Any, Any]:
    if not rows:
        raise AlgorithmError("The RecordIO-protobuf data has no records.")
    labels = [label for _, label in rows]
    present = [label is not None for label in labels]
    if any(present) and not all(present):
        raise AlgorithmError("Some RecordIO-protobuf records have a label and some do not.")
    label_array = np.asarray(labels, dtype=np.float64) if all(present) else None
    dtypes = {(f[1] if isinstance(f, tuple) else f).dtype for f, _ in rows}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
    if any(isinstance(features, tuple) for features, _ in rows):
        return _sparse_matrix([f for f, _ in rows], dtype), label_array
    widths = {len(f) for f, _ in rows if isinstance(f, np.ndarray)}
    if len(widths) > 1:
        raise AlgorithmError(f"Dense records have different lengths: {sorted(widths)}.")
    dense = [f for f, _ in rows if isinstance(f, np.ndarray)]
    return np.vstack(dense).astype(dtype, copy=False), label_array


def _sparse_matrix(rows: list[np.ndarray | Sparse], dtype: np.dtype[Any]) -> Any:
    from scipy import sparse

    indptr = [0]
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    width = 0
    for row in rows:
        if isinstance(row, tuple):
            keys, values, shape = row
            if len(keys) != len(values):
                raise AlgorithmError("A sparse record has different numbers of keys and values.")
            if len(shape) > 1:
                raise AlgorithmError("Sparse records must be vectors (a one-element shape).")
            width = max(width, int(shape[0]) if shape else 0)
            if len(keys):
                width = max(width, int(keys.max()) + 1)
            indices.append(keys.astype(np.int64))
            data.append(values)
        else:  # a dense row among sparse ones
            width = max(width, len(row))
            indices.append(np.arange(len(row), dtype=np.int64))
            data.append(row)
        indptr.append(indptr[-1] + len(indices[-1]))
    matrix = sparse.csr_matrix(
        (np.concatenate(data).astype(dtype), np.concatenate(indices), np.asarray(indptr)),
        shape=(len(rows), width),
    )
    matrix.sum_duplicates()
    return matrix


def write_dataset(
    out: IO[bytes], matrix: Any, labels: np.ndarray | Sequence[float] | None = None
) -> None:
    """Write each row as a record: dense rows for an ndarray, sparse ones (keys, values and
    shape) for a scipy sparse matrix, as the SDK's `write_numpy_to_dense_tensor` and
    `write_spmatrix_to_sparse_tensor` do."""
    label_values = None if labels is None else np.asarray(labels).ravel()
    if label_values is not None and len(label_values) != matrix.shape[0]:
        raise ValueError("labels must have one value per row")
    if hasattr(matrix, "tocsr"):
        csr = matrix.tocsr()
        width = csr.shape[1]
        for i in range(csr.shape[0]):
            start, end = csr.indptr[i], csr.indptr[i + 1]
            row: Sparse = (csr.indices[start:end], csr.data[start:end], (width,))
            label = None if label_values is None else label_values[i]
            write_record(out, encode_record(row, label))
        return
    array = np.asarray(matrix)
    if array.ndim != 2:
        raise ValueError("matrix must be two-dimensional")
    for i, dense_row in enumerate(array):
        label = None if label_values is None else label_values[i]
        write_record(out, encode_record(dense_row, label))


def encode_predictions(predictions: Sequence[Mapping[str, Any]]) -> bytes:
    """The RecordIO-protobuf inference response: one record per prediction, each of its
    entries ("score", "predicted_label", ...) a Float32 tensor in the label map."""
    out = io.BytesIO()
    for prediction in predictions:
        label = {
            name: Tensor(np.atleast_1d(np.asarray(value, dtype=np.float32)))
            for name, value in prediction.items()
        }
        write_record(out, encode_message({}, label))
    return out.getvalue()
