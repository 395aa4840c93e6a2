"""The default request decoders and response encoders of SageMaker's inference toolkit
(sagemaker_inference `decoder.py`, `encoder.py`), plus JSON Lines both ways.

Decoding: `application/json` -> `np.array(json.loads(body))`, `text/csv` -> `np.genfromtxt(...,
delimiter=",")`, `application/x-npy` -> `np.load`, `application/x-npz` -> a scipy sparse matrix,
`application/jsonlines` -> one row per line. Encoding walks the comma-separated Accept list and uses
the first supported of JSON, CSV (`np.savetxt(fmt="%s")`), NPY and JSON Lines. Anything else raises
`UnsupportedFormatError`, which the server answers with HTTP 500 as the toolkit does (it is not one
of the toolkit's errors that carry their own status).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import orjson

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
JSONLINES = "application/jsonlines"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"
# Bodies of these types reach input_fn as str (transformer.py, content_types.UTF8_TYPES).
UTF8_TYPES = frozenset({JSON, CSV})
_JSONLINES_ALIASES = frozenset({JSONLINES, "application/jsonl", "application/x-jsonlines"})


class UnsupportedFormatError(Exception):
    """A content type or Accept value that the default handlers cannot decode or encode."""

    def __init__(self, content_type: str | None) -> None:
        super().__init__(f"Content type {content_type} is not supported by this framework.")
        self.content_type = content_type


def base_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _text(body: bytes | bytearray | str) -> str:
    return body if isinstance(body, str) else bytes(body).decode("utf-8")


def _json_loads(text: bytes | bytearray | str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN and Infinity, which orjson refuses


def _csv_to_numpy(text: str) -> np.ndarray:
    if "," in text and "\n" not in text.strip():  # one row: skip genfromtxt on the hot path
        try:
            return np.array(text.split(","), dtype=np.float64)
        except ValueError:
            pass
    return np.genfromtxt(io.StringIO(text), delimiter=",")


def decode(body: bytes | bytearray | str, content_type: str | None) -> Any:
    """The request body as a numpy array (a scipy sparse matrix for NPZ)."""
    kind = base_type(content_type)
    if kind == JSON:
        return np.array(_json_loads(body))
    if kind == CSV:
        return _csv_to_numpy(_text(body))
    if kind == NPY:
        data = body.encode() if isinstance(body, str) else bytes(body)
        return np.load(io.BytesIO(data), allow_pickle=True)
    if kind == NPZ:
        import scipy.sparse

        data = body.encode() if isinstance(body, str) else bytes(body)
        return scipy.sparse.load_npz(io.BytesIO(data))
    if kind in _JSONLINES_ALIASES:
        lines = [line for line in _text(body).splitlines() if line.strip()]
        return np.array([_json_loads(line) for line in lines])
    raise UnsupportedFormatError(content_type)


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def to_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default)  # arrays via tolist(), as the toolkit
    except TypeError:
        return json.dumps(value, default=_default).encode()


def _to_csv(value: Any) -> bytes:
    array = np.asarray(value)
    # np.savetxt(fmt="%s") formats each element with str(); joining str() of the numpy elements
    # gives the same text without the file machinery.
    if array.ndim == 1:
        return ("\n".join(map(str, array)) + "\n").encode()
    if array.ndim == 2:
        return "".join(",".join(map(str, row)) + "\n" for row in array).encode()
    stream = io.StringIO()
    np.savetxt(stream, array, delimiter=",", fmt="%s")
    return stream.getvalue().encode()


def _to_npy(value: Any) -> bytes:
    stream = io.BytesIO()
    np.save(stream, np.asarray(value))
    return stream.getvalue()


def _to_jsonlines(value: Any) -> bytes:
    rows = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(rows, list):
        rows = [rows]
    return b"".join(to_json(row) + b"\n" for row in rows)


_ENCODERS = {JSON: to_json, CSV: _to_csv, NPY: _to_npy}
_ENCODERS.update(dict.fromkeys(_JSONLINES_ALIASES, _to_jsonlines))


def _encode_each(parts: Iterator[Any], encoder: Callable[[Any], bytes]) -> Iterator[bytes]:
    """Text and bytes pass as they are (tokens of a generated text); the rest is encoded."""
    for part in parts:
        if isinstance(part, bytes):
            yield part
        elif isinstance(part, str):
            yield part.encode("utf-8")
        else:
            yield encoder(part)


def parse_accept(accept: str | None) -> list[str]:
    """The media types of an Accept value, in order, without their parameters."""
    return [base_type(part) for part in (accept or "").split(",") if part.strip()]


def encode(prediction: Any, accept: str | None) -> tuple[Any, str]:
    """The prediction encoded for the first supported type of `accept`, and that type. A
    prediction that is an iterator (a `predict_fn` that yields) stays one: each part is encoded
    on its own as it comes, and the model server streams them."""
    for kind in parse_accept(accept):
        encoder = _ENCODERS.get(kind)
        if encoder is not None:
            if isinstance(prediction, Iterator):
                return _encode_each(prediction, encoder), kind
            return encoder(prediction), kind
    raise UnsupportedFormatError(accept)
