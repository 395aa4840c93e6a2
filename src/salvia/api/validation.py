"""Request validation against botocore's service model: the model is the schema.

Checks required members, types, enums, lengths, ranges and patterns, and reports every violation
the way AWS's JSON services do ("1 validation error detected: Value 'x' at 'experimentName'
failed to satisfy constraint: ..."), as one `ValidationException`. Valid input comes back
normalized: timestamps become aware `datetime`s, blobs become `bytes`, unknown members are dropped
(AWS ignores them too).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

import regex
from botocore.model import ListShape, MapShape, Shape, StructureShape

from salvia.clock import parse_timestamp
from salvia.errors import ValidationException

_MAX_SHOWN = 100

# Values Salvia accepts beyond the model's enums: the SageMaker SDK's `local` instance types,
# which run a job on this machine without a catalog type's limits.
EXTRA_ENUM_VALUES: dict[str, tuple[str, ...]] = {
    "TrainingInstanceType": ("local", "local_gpu"),
    "ProductionVariantInstanceType": ("local", "local_gpu"),
}


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _shown(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def java_pattern(pattern: str) -> Any:
    """Compile one of the model's (Java-flavoured) patterns for full-string matching.

    The standard library's `re` is used where it understands the pattern (it matches several
    times faster); `regex` takes the rest, for classes such as \\p{L} that `re` lacks.
    """
    translated = pattern.replace(r"\uD800\uDC00-\uDBFF\uDFFF", r"\U00010000-\U0010FFFF")
    translated = regex.sub(r"\$\{\d+,\d+\}", "$", translated)  # "...)${1,256}" means "...)$"
    try:
        return re.compile(translated, re.DOTALL)
    except re.error:
        return regex.compile(translated, regex.DOTALL)


class RequestValidator:
    """Validates and normalizes JSON values against botocore shapes. Thread-safe."""

    def __init__(self) -> None:
        self._patterns: dict[str, Any] = {}
        self._scalars: dict[str, Callable[[Shape, Any, str, list[str]], Any]] = {
            "string": self._string,
            "integer": self._integer,
            "long": self._integer,
            "float": self._float,
            "double": self._float,
            "boolean": self._boolean,
            "timestamp": self._timestamp,
            "blob": self._blob,
        }

    def validate(self, shape: StructureShape | None, value: Any) -> dict[str, Any]:
        if shape is None:
            return {}
        errors: list[str] = []
        result = self._value(shape, value, "", errors)
        if errors:
            count = len(errors)
            noun = "error" if count == 1 else "errors"
            raise ValidationException(f"{count} validation {noun} detected: " + "; ".join(errors))
        return result if isinstance(result, dict) else {}

    def _value(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        kind = shape.type_name
        if kind == "structure":
            return self._structure(shape, value, path, errors)
        if kind == "list":
            return self._list(shape, value, path, errors)
        if kind == "map":
            return self._map(shape, value, path, errors)
        return self._scalars[kind](shape, value, path, errors)

    @staticmethod
    def _fail(errors: list[str], value: Any, path: str, constraint: str) -> None:
        where = f" at '{path}'" if path else ""
        shown = "null" if value is None else f"'{_shown(value)}'"
        errors.append(f"Value {shown}{where} failed to satisfy constraint: {constraint}")

    def _structure(
        self, shape: StructureShape, value: Any, path: str, errors: list[str]
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self._fail(errors, value, path, "Member must be a structure")
            return None
        if shape.metadata.get("document"):
            return value
        result: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        for name in shape.required_members:
            if value.get(name) is None:
                self._fail(errors, None, prefix + _camel(name), "Member must not be null")
        members = shape.members
        for name, member_value in value.items():
            member = members.get(name)
            if member is None or member_value is None:
                continue
            result[name] = self._value(member, member_value, prefix + _camel(name), errors)
        if shape.metadata.get("union") and len(result) > 1:
            self._fail(errors, ", ".join(result), path, "Member must have exactly one field set")
        return result

    def _list(self, shape: ListShape, value: Any, path: str, errors: list[str]) -> list[Any]:
        if not isinstance(value, list):
            self._fail(errors, value, path, "Member must be a list")
            return []
        self._size(shape, value, path, errors)
        return [
            self._value(shape.member, item, f"{path}.{i}.member", errors)
            for i, item in enumerate(value, start=1)
        ]

    def _map(self, shape: MapShape, value: Any, path: str, errors: list[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self._fail(errors, value, path, "Member must be a map")
            return {}
        self._size(shape, value, path, errors)
        result = {}
        for key, item in value.items():
            self._string(shape.key, key, f"{path}.key", errors)
            result[key] = self._value(shape.value, item, f"{path}.{key}", errors)
        return result

    def _size(self, shape: Shape, value: Any, path: str, errors: list[str]) -> None:
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and len(value) < low:
            self._fail(
                errors, value, path, f"Member must have length greater than or equal to {low}"
            )
        if high is not None and len(value) > high:
            self._fail(errors, value, path, f"Member must have length less than or equal to {high}")

    def _string(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            self._fail(errors, value, path, "Member must be a string")
            return value
        enum = shape.metadata.get("enum")
        if enum and value not in enum and value not in EXTRA_ENUM_VALUES.get(shape.name, ()):
            allowed = ", ".join(enum)
            self._fail(errors, value, path, f"Member must satisfy enum value set: [{allowed}]")
            return value
        before = len(errors)
        self._size(shape, value, path, errors)
        pattern = shape.metadata.get("pattern")
        # a value already too long is not matched too: no pattern runs on a megabyte of input
        if pattern and len(errors) == before and not self._pattern(pattern).fullmatch(value):
            self._fail(
                errors, value, path, f"Member must satisfy regular expression pattern: {pattern}"
            )
        return value

    def _pattern(self, pattern: str) -> Any:
        compiled = self._patterns.get(pattern)
        if compiled is None:
            compiled = self._patterns[pattern] = java_pattern(pattern)
        return compiled

    def _range(self, shape: Shape, value: float, path: str, errors: list[str]) -> None:
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and value < low:
            self._fail(
                errors, value, path, f"Member must have value greater than or equal to {low}"
            )
        if high is not None and value > high:
            self._fail(errors, value, path, f"Member must have value less than or equal to {high}")

    def _integer(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self._fail(errors, value, path, f"Member must be of type {shape.type_name}")
            return value
        bits = 31 if shape.type_name == "integer" else 63
        if not -(2**bits) <= value < 2**bits:
            self._fail(
                errors, value, path, f"Member must fit in a {bits + 1}-bit {shape.type_name}"
            )
            return value
        self._range(shape, value, path, errors)
        return value

    def _float(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and value in {"NaN", "Infinity", "-Infinity"}:
            return float(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            self._fail(errors, value, path, f"Member must be of type {shape.type_name}")
            return value
        self._range(shape, value, path, errors)
        return float(value)

    def _boolean(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, bool):
            self._fail(errors, value, path, "Member must be of type boolean")
        return value

    def _timestamp(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        parsed = parse_timestamp(value)
        if parsed is None:
            self._fail(errors, value, path, "Member must be a timestamp in epoch seconds")
        return parsed

    def _blob(self, shape: Shape, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            self._fail(errors, value, path, "Member must be base64-encoded binary data")
            return value
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            self._fail(errors, value, path, "Member must be base64-encoded binary data")
            return value
        self._size(shape, data, path, errors)
        return data
