"""Metrics from a job's log: each `MetricDefinitions` regex's first capture group, per line.

SageMaker matches against the log as CloudWatch shows it, where a TAB reads `#011`; built-in
regexes (XGBoost's `.*\\[[0-9]+\\].*#011validation-rmse:(\\S+)`) depend on that, while user
regexes usually expect the TAB. Each line is therefore tried in both renderings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from salvia.store.metadata import MetricPoint

# SageMaker's XGBoost regexes capture `(\S+)`, which takes `0.94#011validation-logloss:0.57`
# when another metric follows on the line; the value is the number it starts with.
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _leading_number(text: str | None) -> float | None:
    if text is None:
        return None
    found = _NUMBER.match(text.strip())
    return float(found.group(0)) if found else None


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    pattern: re.Pattern[str]


def compile_definitions(definitions: Sequence[dict[str, str]]) -> list[MetricDefinition]:
    """Compile `[{"Name": ..., "Regex": ...}]`; a bad regex raises `re.error` naming it."""
    return [MetricDefinition(d["Name"], re.compile(d["Regex"])) for d in definitions]


class MetricScraper:
    """Turns log lines into metric points and remembers each metric's last value."""

    def __init__(self, definitions: Sequence[MetricDefinition]) -> None:
        self.definitions = list(definitions)
        self.final: dict[str, tuple[float, float]] = {}  # name -> (value, timestamp)

    def feed(self, message: str, timestamp: float) -> list[MetricPoint]:
        points = []
        renderings = (message, message.replace("\t", "#011"))
        for definition in self.definitions:
            for text in renderings if "\t" in message else renderings[:1]:
                found = definition.pattern.search(text)
                if not found:
                    continue
                captured = found.group(1) if found.groups() else found.group(0)
                value = _leading_number(captured)
                if value is None:
                    break
                if math.isfinite(value):
                    points.append(MetricPoint(definition.name, timestamp, value))
                    self.final[definition.name] = (value, timestamp)
                break
        return points

    def final_metric_data(self) -> list[dict[str, float | str]]:
        return [
            {"MetricName": name, "Value": value, "Timestamp": timestamp}
            for name, (value, timestamp) in sorted(self.final.items())
        ]
