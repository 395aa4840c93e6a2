"""Plotly figures as plain data: the page hands them to plotly.js, served by Salvia itself."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def series(
    name: str, x: Sequence[Any], y: Sequence[Any], *, mode: str = "lines+markers", **extra: Any
) -> dict[str, Any]:
    return {"type": "scatter", "mode": mode, "name": name, "x": list(x), "y": list(y), **extra}


def figure(
    traces: list[dict[str, Any]], *, x_title: str = "", y_title: str = "", time_axis: bool = False
) -> dict[str, Any]:
    x_axis: dict[str, Any] = {"title": {"text": x_title}}
    if time_axis:
        x_axis["type"] = "date"
    return {
        "data": traces,
        "layout": {
            "xaxis": x_axis,
            "yaxis": {"title": {"text": y_title}},
            "legend": {"orientation": "h", "y": -0.2},
            "hovermode": "closest",
        },
    }


def bars(name: str, labels: Sequence[str], values: Sequence[float]) -> dict[str, Any]:
    return {"type": "bar", "name": name, "x": list(labels), "y": list(values)}
