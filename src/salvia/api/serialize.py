"""Shape a resource's answer per the output shape of the service model.

Members the shape does not declare are dropped (so an internal field can never leak onto the
wire), `None` is omitted, timestamps become epoch seconds and blobs base64, as the JSON protocols
expect.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from botocore.model import Shape


def shape_output(shape: Shape | None, value: Any) -> Any:
    if shape is None:
        return {}
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return {}
        if shape.metadata.get("document"):
            return value
        members = shape.members
        out = {}
        for name, item in value.items():
            member = members.get(name)
            if member is not None and item is not None:
                out[name] = shape_output(member, item)
        return out
    if kind == "list":
        return [shape_output(shape.member, item) for item in value]
    if kind == "map":
        return {k: shape_output(shape.value, v) for k, v in value.items()}
    if kind == "timestamp":
        return value.timestamp() if isinstance(value, datetime) else value
    if kind == "blob":
        return base64.b64encode(value).decode() if isinstance(value, bytes) else value
    return value
