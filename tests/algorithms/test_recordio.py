"""RecordIO-protobuf against independent implementations of the format: a small encoder and
decoder written here from the published specification (dmlc-core's RecordIO framing and the
protobuf wire format of the SDK's `record.proto`), and the SageMaker SDK's own functions."""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from scipy import sparse

from salvia.algorithms import recordio
from salvia.algorithms.base import AlgorithmError

KMAGIC = 0xCED7230A


# --- an independent implementation, from the specification -----------------------------


def spec_varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    groups = []
    while True:
        groups.append(n % 128)
        n //= 128
        if n == 0:
            break
    return bytes([g | 128 for g in groups[:-1]] + [groups[-1]])


def spec_len_field(number: int, body: bytes) -> bytes:
    return spec_varint(number * 8 + 2) + spec_varint(len(body)) + body


def spec_tensor(
    oneof: int, values: Sequence[Any], keys: Sequence[int] = (), shape: Sequence[int] = ()
) -> bytes:
    if oneof == 7:
        packed = b"".join(spec_varint(v) for v in values)
    else:
        packed = struct.pack(f"<{len(values)}{'f' if oneof == 2 else 'd'}", *values)
    body = spec_len_field(1, packed) if values else b""
    if keys:
        body += spec_len_field(2, b"".join(spec_varint(k) for k in keys))
    if shape:
        body += spec_len_field(3, b"".join(spec_varint(s) for s in shape))
    return spec_len_field(oneof, body)


def spec_record(features: bytes, label: bytes | None = None) -> bytes:
    out = spec_len_field(1, spec_len_field(1, b"values") + spec_len_field(2, features))
    if label is not None:
        out += spec_len_field(2, spec_len_field(1, b"values") + spec_len_field(2, label))
    return out


def spec_frame(payload: bytes) -> bytes:
    """One unsplit record: magic, length word (flag 0), data, padding to 4 bytes."""
    pad = (4 - len(payload) % 4) % 4
    return struct.pack("<II", KMAGIC, len(payload)) + payload + b"\x00" * pad


def spec_unframe(data: bytes) -> list[bytes]:
    """dmlc's reader: join the parts of split records with the magic number."""
    records, current, pos = [], b"", 0
    while pos < len(data):
        magic, word = struct.unpack_from("<II", data, pos)
        assert magic == KMAGIC
        flag, length = word >> 29, word & ((1 << 29) - 1)
        pos += 8
        current += data[pos : pos + length]
        pos += (length + 3) // 4 * 4
        if flag in (0, 3):
            records.append(current)
            current = b""
        else:
            current += struct.pack("<I", KMAGIC)
    return records


def spec_parse(data: bytes) -> dict[int, list[Any]]:
    """Parse one protobuf message into field number -> raw values."""
    fields: dict[int, list[Any]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 127) << shift
            shift += 7
            if not byte & 128:
                return result

    while pos < len(data):
        tag = varint()
        assert tag & 7 == 2, "the Record messages only use length-delimited fields"
        size = varint()
        fields.setdefault(tag >> 3, []).append(data[pos : pos + size])
        pos += size
    return fields


def spec_varints(data: bytes) -> list[int]:
    out, n, shift = [], 0, 0
    for byte in data:
        n |= (byte & 127) << shift
        shift += 7
        if not byte & 128:
            out.append(n)
            n, shift = 0, 0
    return out


def spec_decode(payload: bytes) -> dict[str, dict[str, Any]]:
    """{'features'|'label': {'kind': oneof number, 'values', 'keys', 'shape'}}."""
    out = {}
    for number, name in ((1, "features"), (2, "label")):
        for entry in spec_parse(payload).get(number, []):
            entry_fields = spec_parse(entry)
            assert entry_fields[1] == [b"values"]
            (oneof, (tensor,)) = next(iter(spec_parse(entry_fields[2][0]).items()))
            parts = spec_parse(tensor)
            raw = b"".join(parts.get(1, []))
            code, size = ("f", 4) if oneof == 2 else ("d", 8)
            values = (
                spec_varints(raw)
                if oneof == 7
                else list(struct.unpack(f"<{len(raw) // size}{code}", raw))
            )
            out[name] = {
                "kind": oneof,
                "values": values,
                "keys": spec_varints(b"".join(parts.get(2, []))),
                "shape": spec_varints(b"".join(parts.get(3, []))),
            }
    return out


# --- spec → salvia ------------------------------------------------------------------------


def test_reads_dense_float32_records_written_from_the_spec() -> None:
    body = spec_frame(spec_record(spec_tensor(2, [1.5, -2.0, 0.25]), spec_tensor(2, [1.0])))
    body += spec_frame(spec_record(spec_tensor(2, [0.0, 3.0, 4.5]), spec_tensor(2, [0.0])))
    features, labels = recordio.read_dataset_bytes(body)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, [[1.5, -2.0, 0.25], [0.0, 3.0, 4.5]])
    np.testing.assert_array_equal(labels, [1.0, 0.0])


def test_reads_sparse_records_written_from_the_spec() -> None:
    body = spec_frame(spec_record(spec_tensor(3, [2.5, 7.0], [1, 8], [10]), spec_tensor(3, [4.0])))
    body += spec_frame(spec_record(spec_tensor(3, [], [], [10]), spec_tensor(3, [5.0])))
    body += spec_frame(spec_record(spec_tensor(3, [1.0], [0], [10]), spec_tensor(3, [6.0])))
    features, labels = recordio.read_dataset_bytes(body)
    assert sparse.issparse(features) and features.shape == (3, 10)
    dense = np.zeros((3, 10))
    dense[0, 1], dense[0, 8], dense[2, 0] = 2.5, 7.0, 1.0
    np.testing.assert_array_equal(features.toarray(), dense)
    np.testing.assert_array_equal(labels, [4.0, 5.0, 6.0])


def test_reads_int32_values_including_negative_ones() -> None:
    payload = spec_record(spec_tensor(7, [3, -1, 2**31 - 1, -(2**31)]))
    features, label = recordio.decode_record(payload)
    assert label is None
    assert isinstance(features, np.ndarray)
    assert features.tolist() == [3, -1, 2**31 - 1, -(2**31)]


def test_joins_records_split_at_the_magic_number() -> None:
    # dmlc splits a payload wherever the magic sits at a 4-byte-aligned offset; a metadata
    # field (4) of the right length in front puts a float with the magic's bits there
    magic_float = struct.unpack("<f", struct.pack("<I", KMAGIC))[0]
    tensor = spec_tensor(2, [1.0, magic_float, 2.0])
    for size in range(4):
        payload = spec_len_field(4, b"m" * size) + spec_record(tensor)
        at = payload.index(struct.pack("<I", KMAGIC))
        if at % 4 == 0:
            break
    stream = io.BytesIO()
    recordio.write_record(stream, payload)
    written = stream.getvalue()
    assert struct.unpack_from("<I", written, 4)[0] >> 29 == 1  # the first of several parts
    assert spec_unframe(written) == [payload]
    features, _ = recordio.decode_record(next(recordio.read_records(written)))
    assert isinstance(features, np.ndarray)
    assert features.view("<u4")[1] == KMAGIC

    head, tail = payload[:at], payload[at + 4 :]  # split by hand, read back whole
    framed = struct.pack("<II", KMAGIC, (1 << 29) | len(head)) + head
    framed += struct.pack("<II", KMAGIC, (3 << 29) | len(tail)) + tail + b"\0" * (-len(tail) % 4)
    assert list(recordio.read_records(framed)) == [payload]


def test_refuses_data_that_is_not_recordio() -> None:
    with pytest.raises(AlgorithmError, match="magic"):
        list(recordio.read_records(b"1,2,3\n4,5,6\n"))
    with pytest.raises(AlgorithmError, match="ends inside"):
        list(recordio.read_records(spec_frame(b"abcdefgh")[:-3]))


# --- salvia → spec ------------------------------------------------------------------------


def test_writes_dense_records_the_spec_decoder_reads() -> None:
    matrix = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]], dtype=np.float32)
    stream = io.BytesIO()
    recordio.write_dataset(stream, matrix, np.array([0.0, 1.0], dtype=np.float32))
    records = [spec_decode(p) for p in spec_unframe(stream.getvalue())]
    assert [r["features"]["values"] for r in records] == matrix.tolist()
    assert [r["features"]["kind"] for r in records] == [2, 2]  # Float32Tensor
    assert [r["label"]["values"] for r in records] == [[0.0], [1.0]]


def test_writes_sparse_records_the_spec_decoder_reads() -> None:
    matrix = sparse.csr_matrix(np.array([[0, 2.5, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, 3.0]]))
    stream = io.BytesIO()
    recordio.write_dataset(stream, matrix, [7.0, 8.0, 9.0])
    records = [spec_decode(p) for p in spec_unframe(stream.getvalue())]
    assert [r["features"]["keys"] for r in records] == [[1], [], [0, 3]]
    assert [r["features"]["values"] for r in records] == [[2.5], [], [1.0, 3.0]]
    assert [r["features"]["shape"] for r in records] == [[4], [4], [4]]
    assert [r["features"]["kind"] for r in records] == [3, 3, 3]  # Float64Tensor
    assert [r["label"]["values"] for r in records] == [[7.0], [8.0], [9.0]]


def test_record_round_trip_and_files(tmp_path: Path) -> None:
    payload = recordio.encode_record(([2, 5], np.array([1.0, -1.0], np.float32), (6,)), 3.0)
    features, label = recordio.decode_record(payload)
    assert isinstance(features, tuple) and label == 3.0
    assert features[0].tolist() == [2, 5] and features[1].tolist() == [1.0, -1.0]
    assert features[2] == (6,)
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(5, 4))
    for index, part in enumerate((dense[:2], dense[2:])):
        with (tmp_path / f"part-{index}.rec").open("wb") as out:
            recordio.write_dataset(out, part, np.arange(len(part), dtype=float))
    matrix, labels = recordio.read_dataset(sorted(tmp_path.iterdir()))
    np.testing.assert_array_equal(matrix, dense)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1, 2])


# --- the SageMaker SDK as a second independent implementation ------------------------------


@pytest.fixture(scope="module")
def sdk() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module: ModuleType = pytest.importorskip("sagemaker.amazon.common")
    return module


def test_reads_what_the_sdk_writes(sdk: ModuleType) -> None:
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(20, 6))
    labels = rng.integers(0, 2, 20).astype(float)
    stream = io.BytesIO()
    sdk.write_numpy_to_dense_tensor(stream, dense, labels)
    features, read_labels = recordio.read_dataset_bytes(stream.getvalue())
    np.testing.assert_array_equal(features, dense)
    np.testing.assert_array_equal(read_labels, labels)

    matrix = sparse.random(30, 50, density=0.1, format="csr", dtype=np.float32, random_state=2)
    stream = io.BytesIO()
    sdk.write_spmatrix_to_sparse_tensor(stream, matrix, np.arange(30, dtype=np.float32))
    features, read_labels = recordio.read_dataset_bytes(stream.getvalue())
    assert sparse.issparse(features) and features.shape == (30, 50)
    assert features.dtype == np.float32
    assert abs(features - matrix).max() == 0
    np.testing.assert_array_equal(read_labels, np.arange(30))


def test_the_sdk_reads_what_salvia_writes(sdk: ModuleType) -> None:
    matrix = sparse.random(10, 40, density=0.2, format="csr", dtype=np.float32, random_state=3)
    stream = io.BytesIO()
    recordio.write_dataset(stream, matrix, np.arange(10, dtype=np.float32))
    stream.seek(0)
    records = sdk.read_records(stream)
    assert len(records) == 10
    for index, record in enumerate(records):
        tensor = record.features["values"].float32_tensor
        row = matrix.getrow(index)
        assert list(tensor.keys) == row.indices.tolist()
        np.testing.assert_array_equal(np.asarray(tensor.values, np.float32), row.data)
        assert list(tensor.shape) == [40]
        assert record.label["values"].float32_tensor.values[0] == index

    stream = io.BytesIO(recordio.encode_predictions([{"score": 0.25, "predicted_label": 1}]))
    (record,) = sdk.read_records(stream)
    assert record.label["score"].float32_tensor.values[0] == 0.25
    assert record.label["predicted_label"].float32_tensor.values[0] == 1.0


@pytest.mark.parametrize(
    ("features", "labels"),
    [
        (sparse.random(300, 40, density=0.1, format="csr", dtype=np.float32, random_state=1),
         np.arange(300, dtype=np.float32)),
        (np.random.default_rng(2).random((300, 6), dtype=np.float32), None),
        (np.random.default_rng(3).random((50, 4)), np.ones(50)),  # Float64: the general path
    ],
)  # fmt: skip
def test_the_quick_reader_reads_what_the_record_by_record_one_does(
    features: Any, labels: np.ndarray | None
) -> None:
    out = io.BytesIO()
    recordio.write_dataset(out, features, labels)
    payloads = list(recordio.read_records(out.getvalue()))
    quick = recordio.read_dataset_bytes(out.getvalue())
    general = recordio._assemble([recordio.decode_record(p) for p in payloads])
    assert type(quick[0]) is type(general[0])
    assert quick[0].dtype == general[0].dtype and quick[0].shape == general[0].shape
    if sparse.issparse(general[0]):
        assert (quick[0] != general[0]).nnz == 0
    else:
        np.testing.assert_array_equal(quick[0], general[0])
    if labels is None:
        assert quick[1] is None and general[1] is None
    else:
        np.testing.assert_array_equal(quick[1], general[1])
