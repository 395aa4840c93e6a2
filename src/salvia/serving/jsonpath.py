"""The JSONPath subset batch transform's `InputFilter` and `OutputFilter` support, as SageMaker
documents it: `$`, `.name`, `*`, `['a','b']`, `[i,j]` (negative indices allowed) and
`[start:end]`, chained (`$.features[1:]`).

Selecting one name or index yields that value; several names yield an object of those members,
several indices or a slice a list, in the order given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Step = Callable[[Any], Any]
_TOKEN = re.compile(r"\.(\*|[A-Za-z_][\w-]*)|\[([^\]]*)\]")
_INT = re.compile(r"-?\d+")


class JsonPathError(ValueError):
    pass


def compile_path(path: str) -> Callable[[Any], Any]:
    """A function applying `path` to a parsed JSON value; raises JsonPathError for a path outside
    the subset, and (when applied) for a member or index the value does not have."""
    text = path.strip()
    if not text.startswith("$"):
        raise JsonPathError(f"JSONPath {path!r} must start with '$'.")
    steps: list[Step] = []
    position = 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise JsonPathError(f"JSONPath {path!r}: unsupported syntax at {text[position:]!r}.")
        dotted, bracket = match.groups()
        steps.append(_dotted(dotted) if dotted is not None else _bracket(path, bracket.strip()))
        position = match.end()

    def apply(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    return apply


def _dotted(name: str) -> Step:
    return _all if name == "*" else _member(name)


def _bracket(path: str, inside: str) -> Step:
    if inside == "*":
        return _all
    if ":" in inside:
        start, _, end = inside.partition(":")
        if not all(_INT.fullmatch(p.strip()) for p in (start, end) if p.strip()):
            raise JsonPathError(f"JSONPath {path!r}: slice bounds must be integers.")
        bounds = slice(int(start) if start.strip() else None, int(end) if end.strip() else None)
        return lambda value: _as_list(value)[bounds]
    parts = [p.strip() for p in inside.split(",")]
    if all(_INT.fullmatch(p) for p in parts):
        indices = [int(p) for p in parts]
        if len(indices) == 1:
            return lambda value: _index(value, indices[0])
        return lambda value: [_index(value, i) for i in indices]
    if all(len(p) >= 2 and p[0] == p[-1] and p[0] in "'\"" for p in parts):
        names = [p[1:-1] for p in parts]
        if len(names) == 1:
            return _member(names[0])
        return lambda value: {n: _member(n)(value) for n in names}
    raise JsonPathError(f"JSONPath {path!r}: unsupported selector [{inside}].")


def _member(name: str) -> Step:
    def select(value: Any) -> Any:
        if not isinstance(value, dict) or name not in value:
            raise JsonPathError(f"the record has no member {name!r}")
        return value[name]

    return select


def _all(value: Any) -> Any:
    return list(value.values()) if isinstance(value, dict) else _as_list(value)


def _as_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise JsonPathError("an index or slice applies to arrays (and CSV rows) only")
    return value


def _index(value: Any, index: int) -> Any:
    items = _as_list(value)
    if not -len(items) <= index < len(items):
        raise JsonPathError(f"index {index} is outside the record's {len(items)} items")
    return items[index]
