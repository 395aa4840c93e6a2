"""sagemaker-metrics: BatchPutMetrics logs points to a trial component, BatchGetMetrics reads
them back aggregated by step or by time period."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from salvia.errors import ValidationException
from salvia.resources.common import ResourceContext
from salvia.resources.experiments import TRIAL_COMPONENT
from salvia.resources.registry import operation
from salvia.store.metadata import MetricPoint

_PERIOD_SECONDS = {"OneMinute": 60, "FiveMinute": 300, "OneHour": 3600}
_STATS: dict[str, Callable[[Sequence[float]], float]] = {
    "Min": min,
    "Max": max,
    "Avg": statistics.fmean,
    "Count": lambda values: float(len(values)),
    "StdDev": lambda values: statistics.stdev(values) if len(values) > 1 else 0.0,
    "Last": lambda values: values[-1],
}
_MAX_POINTS = 10_000  # per query result, as a page of a metric series


class Metrics:
    def __init__(self, ctx: ResourceContext) -> None:
        self.ctx = ctx

    @operation("BatchPutMetrics")
    def batch_put_metrics(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["TrialComponentName"]
        record = self.ctx.store.get(TRIAL_COMPONENT, name)
        if record is None:
            arn = self.ctx.arn(TRIAL_COMPONENT, name)
            raise ValidationException(f"Could not find trial component '{arn}'.")
        points, errors = [], []
        for index, datum in enumerate(request["MetricData"]):
            value = datum["Value"]
            if not math.isfinite(value):
                errors.append({"Code": "VALIDATION_ERROR", "MetricIndex": index})
                continue
            points.append(
                MetricPoint(
                    name=datum["MetricName"],
                    timestamp=datum["Timestamp"].timestamp(),
                    value=value,
                    step=datum.get("Step"),
                )
            )
        self.ctx.store.put_metrics(record.arn, points)
        return {"Errors": errors} if errors else {}

    @operation("BatchGetMetrics")
    def batch_get_metrics(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"MetricQueryResults": [self._query(q) for q in request["MetricQueries"]]}

    def _query(self, query: dict[str, Any]) -> dict[str, Any]:
        record = self.ctx.store.get_by_arn(query["ResourceArn"])
        if record is None:
            return _failed(f"Could not find resource '{query['ResourceArn']}'.")
        points = self.ctx.store.get_metrics(record.arn, query["MetricName"])
        start, end = query.get("Start"), query.get("End")
        points = [
            p
            for p in points
            if (start is None or p.timestamp >= start) and (end is None or p.timestamp <= end)
        ]
        by_step = query["XAxisType"] == "IterationNumber"
        if by_step and any(p.step is None for p in points):
            return _failed("Some points of this metric were logged without a Step.")
        buckets: dict[float, list[MetricPoint]] = {}
        for point in points:
            if query["Period"] == "IterationNumber":
                # a point without a Step (a metric scraped from a job's log) is its own
                # iteration on a time axis: the raw series, unaggregated
                key = point.timestamp if point.step is None else point.step
            else:
                seconds = _PERIOD_SECONDS[query["Period"]]
                key = int(point.timestamp // seconds * seconds)
            buckets.setdefault(key, []).append(point)
        stat = _STATS[query["MetricStat"]]
        x_values, values = [], []
        for key in sorted(buckets):
            group = buckets[key]
            if by_step and query["Period"] != "IterationNumber":
                key = max(p.step or 0 for p in group)
            elif not by_step and query["Period"] == "IterationNumber":
                key = int(max(p.timestamp for p in group))
            x_values.append(key)
            values.append(stat([p.value for p in group]))
        status = "Truncated" if len(values) > _MAX_POINTS else "Complete"
        return {
            "Status": status,
            "XAxisValues": x_values[:_MAX_POINTS],
            "MetricValues": values[:_MAX_POINTS],
        }


def _failed(message: str) -> dict[str, Any]:
    return {"Status": "ValidationError", "Message": message, "XAxisValues": [], "MetricValues": []}
