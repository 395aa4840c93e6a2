"""Job pages: training (timeline, hyperparameters, channels, metrics, log tail, artifacts, stop),
tuning (trials by objective, objective per trial, best job), processing and transform."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from salvia.errors import SalviaError
from salvia.ui import charts
from salvia.ui.lists import options
from salvia.ui.pages import PREFIX, Pages, busy

LOG_LINES = 200  # the tail a page opens with
_KINDS = {
    # slug: (Describe operation, name member, status member, log group)
    "training-jobs": (
        "DescribeTrainingJob",
        "TrainingJobName",
        "TrainingJobStatus",
        "/aws/sagemaker/TrainingJobs",
    ),
    "processing-jobs": (
        "DescribeProcessingJob",
        "ProcessingJobName",
        "ProcessingJobStatus",
        "/aws/sagemaker/ProcessingJobs",
    ),
    "transform-jobs": (
        "DescribeTransformJob",
        "TransformJobName",
        "TransformJobStatus",
        "/aws/sagemaker/TransformJobs",
    ),
}


class LogTail:
    """The newest lines of a job's log streams, and a cursor per stream to follow them."""

    def __init__(self, pages: Pages, group: str, job: str) -> None:
        self.api = pages.api
        self.group = group
        self.prefix = f"{job}/"

    async def streams(self) -> list[str]:
        try:
            answer = await self.api.logs(
                "DescribeLogStreams", logGroupName=self.group, logStreamNamePrefix=self.prefix
            )
        except SalviaError as error:
            if error.code == "ResourceNotFoundException":
                return []  # nothing logged yet
            raise
        return [stream["logStreamName"] for stream in answer.get("logStreams", [])]

    async def read(self, tokens: dict[str, str] | None) -> tuple[list[str], dict[str, str]]:
        """Lines after `tokens` (None: the last LOG_LINES of each stream) and the new tokens."""
        names = await self.streams()
        lines: list[str] = []
        after: dict[str, str] = {}
        for name in names:
            if tokens is None:
                params: dict[str, Any] = {"startFromHead": False, "limit": LOG_LINES}
            elif name in tokens:
                params = {"startFromHead": True, "nextToken": tokens[name]}
            else:
                params = {"startFromHead": True}  # a stream that appeared since
            answer = await self.api.logs(
                "GetLogEvents", logGroupName=self.group, logStreamName=name, **params
            )
            host = name[len(self.prefix) :].split("-")
            label = f"[{'-'.join(host[:2])}] " if len(names) > 1 else ""
            lines.extend(label + event["message"] for event in answer.get("events", []))
            after[name] = answer.get("nextForwardToken") or (tokens or {}).get(name, "")
        return lines, after


async def _log_json(pages: Pages, request: Request) -> Response:
    slug, name = request.path_params["kind"], request.path_params["name"]
    if slug not in _KINDS:
        return JSONResponse({"error": f"No logs for {slug}."}, status_code=404)
    describe, member, status_member, group = _KINDS[slug]
    try:
        tokens = json.loads(request.query_params.get("tokens") or "{}")
        if not isinstance(tokens, dict):
            tokens = {}
        job = await pages.api.sagemaker(describe, **{member: name})
        lines, after = await LogTail(pages, group, name).read(tokens)
    except SalviaError as error:
        return JSONResponse({"error": f"{error.code}: {error.message}"})
    except ValueError:
        return JSONResponse({"error": "The log cursor is not valid JSON."}, status_code=400)
    return JSONResponse({"lines": lines, "tokens": after, "status": job.get(status_member)})


async def _log_context(pages: Pages, slug: str, name: str, status: str) -> dict[str, Any]:
    group = _KINDS[slug][3]
    try:
        lines, tokens = await LogTail(pages, group, name).read(None)
        error = None
    except SalviaError as failure:
        lines, tokens, error = [], {}, failure
    return {
        "log_lines": lines,
        "log_tokens": tokens,
        "log_url": f"{PREFIX}/{slug}/{name}/log",
        "log_error": error,
        "log_status": status,
        "log_group": group,
    }


async def metric_series(pages: Pages, job: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """The job's metrics over time (the points scraped from its log), from sagemaker-metrics."""
    names = [d["Name"] for d in job.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])]
    names += [m["MetricName"] for m in job.get("FinalMetricDataList", [])]
    names = list(dict.fromkeys(names))
    if not names:
        return None, None
    queries = [
        {
            "MetricName": name,
            "ResourceArn": job["TrainingJobArn"],
            "MetricStat": "Avg",
            "Period": "IterationNumber",
            "XAxisType": "Timestamp",
        }
        for name in names
    ]
    try:
        answer = await pages.api.metrics("BatchGetMetrics", MetricQueries=queries)
    except SalviaError as error:
        return None, error
    results = [
        (name, result)
        for name, result in zip(names, answer.get("MetricQueryResults", []), strict=False)
        if result.get("Status") == "Complete" and result.get("MetricValues")
    ]
    if not results:
        return None, None
    # the axis is in whole seconds: points logged within one second are drawn in log order
    crowded = any(len(set(r["XAxisValues"])) < len(r["XAxisValues"]) for _, r in results)
    traces = [
        charts.series(
            name,
            range(1, len(r["MetricValues"]) + 1)
            if crowded
            else [charts.iso(v) for v in r["XAxisValues"]],
            r["MetricValues"],
        )
        for name, r in results
    ]
    if crowded:
        return charts.figure(traces, x_title="point, in log order", y_title="value"), None
    return charts.figure(traces, x_title="time (UTC)", y_title="value", time_axis=True), None


async def training_job(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    job = await pages.api.sagemaker("DescribeTrainingJob", TrainingJobName=name)
    status = job.get("TrainingJobStatus", "")
    metrics_figure, metrics_error = await metric_series(pages, job)
    return pages.render(
        request,
        "training_job.html",
        title=name,
        job=job,
        charts=True,
        metrics_figure=metrics_figure,
        metrics_error=metrics_error,
        notice=request.query_params.get("notice"),
        **await _log_context(pages, "training-jobs", name, status),
    )


async def stop_job(pages: Pages, request: Request) -> Response:
    slug, name = request.path_params["kind"], request.path_params["name"]
    operation = {
        "training-jobs": ("StopTrainingJob", "TrainingJobName"),
        "processing-jobs": ("StopProcessingJob", "ProcessingJobName"),
        "transform-jobs": ("StopTransformJob", "TransformJobName"),
        "tuning-jobs": ("StopHyperParameterTuningJob", "HyperParameterTuningJobName"),
    }.get(slug)
    if operation is None:
        return RedirectResponse(f"{PREFIX}/home", status_code=303)
    await pages.api.sagemaker(operation[0], **{operation[1]: name})
    return RedirectResponse(f"{PREFIX}/{slug}/{name}?notice=Stop+requested", status_code=303)


def _objective(trial: dict[str, Any]) -> float | None:
    value = (trial.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
    return float(value) if isinstance(value, int | float) else None


async def tuning_job(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    job = await pages.api.sagemaker(
        "DescribeHyperParameterTuningJob", HyperParameterTuningJobName=name
    )
    sorts = options("ListTrainingJobsForHyperParameterTuningJob", "SortBy")
    sort = request.query_params.get("sort", "FinalObjectiveMetricValue")
    sort = sort if sort in sorts else "FinalObjectiveMetricValue"
    objective = job.get("HyperParameterTuningJobConfig", {}).get(
        "HyperParameterTuningJobObjective", {}
    )
    minimize = objective.get("Type") == "Minimize"
    best_first = "Ascending" if minimize else "Descending"
    order = request.query_params.get("order") or (
        best_first if sort == "FinalObjectiveMetricValue" else "Descending"
    )
    order = order if order in {"Ascending", "Descending"} else "Descending"
    trials = [
        trial
        async for trial in pages.api.every(
            "ListTrainingJobsForHyperParameterTuningJob",
            "TrainingJobSummaries",
            limit=500,
            HyperParameterTuningJobName=name,
            SortBy=sort,
            SortOrder=order,
            MaxResults=100,
        )
    ]
    by_start = sorted(trials, key=lambda t: t.get("CreationTime") or 0)
    points = [(i + 1, _objective(t), t["TrainingJobName"]) for i, t in enumerate(by_start)]
    points = [p for p in points if p[1] is not None]
    figure = None
    if points:
        best, best_so_far = None, []
        for _, value, _ in points:
            assert value is not None
            better = best is None or (value < best if minimize else value > best)
            best = value if better else best
            best_so_far.append(best)
        figure = charts.figure(
            [
                charts.series(
                    objective.get("MetricName", "objective"),
                    [p[0] for p in points],
                    [p[1] for p in points],
                    mode="markers",
                    text=[p[2] for p in points],
                ),
                charts.series("best so far", [p[0] for p in points], best_so_far, mode="lines"),
            ],
            x_title="trial (in order of creation)",
            y_title=objective.get("MetricName", "objective"),
        )
    return pages.render(
        request,
        "tuning_job.html",
        title=name,
        # while it tunes, its counts, best job, chart and trials are renewed in place
        refresh="#tuning-status, #tuning-overview, #best, #objective, #trials tbody",
        live=busy(job.get("HyperParameterTuningJobStatus")),
        job=job,
        trials=trials,
        sort=sort,
        order=order,
        sorts=sorts,
        objective=objective,
        figure=figure,
        charts=True,
        notice=request.query_params.get("notice"),
    )


async def other_job(pages: Pages, request: Request) -> Response:
    slug, name = request.path_params["kind"], request.path_params["name"]
    if slug not in ("processing-jobs", "transform-jobs"):
        return RedirectResponse(f"{PREFIX}/home", status_code=303)
    describe, member, status_member, _ = _KINDS[slug]
    job = await pages.api.sagemaker(describe, **{member: name})
    status = job.get(status_member, "")
    return pages.render(
        request,
        f"{slug.replace('-', '_')[:-1]}.html",
        title=name,
        job=job,
        job_status=status,
        slug=slug,
        notice=request.query_params.get("notice"),
        **await _log_context(pages, slug, name, status),
    )


def routes(pages: Pages) -> list[Route]:
    def fixed(handler: Any, kind: str) -> Any:
        async def endpoint(request: Request) -> Response:
            request.path_params["kind"] = kind
            return await handler(pages, request)

        return endpoint

    stoppable = ("training-jobs", "processing-jobs", "transform-jobs", "tuning-jobs")
    return [
        Route("/training-jobs/{name}", pages.bind(training_job)),
        Route("/tuning-jobs/{name}", pages.bind(tuning_job)),
        Route("/processing-jobs/{name}", fixed(other_job, "processing-jobs")),
        Route("/transform-jobs/{name}", fixed(other_job, "transform-jobs")),
        *(Route(f"/{kind}/{{name}}/log", fixed(_log_json, kind)) for kind in _KINDS),
        *(
            Route(f"/{kind}/{{name}}/stop", fixed(stop_job, kind), methods=["POST"])
            for kind in stoppable
        ),
    ]
