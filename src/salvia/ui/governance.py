"""Governance pages: the model registry (versions, approval), experiments (runs compared on a
metric), trial components, and lineage drawn as a graph."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from salvia.errors import SalviaError
from salvia.ui import charts
from salvia.ui.pages import PREFIX, Pages, read_form

RUNS_SHOWN = 100  # runs of one experiment described for the comparison
STATS = ("Last", "Max", "Min", "Avg")
LABELLED = 100  # artifacts of one graph described for their labels
DESCRIBED_VERSIONS = 50  # versions of a group described for their metadata


async def package_group(pages: Pages, request: Request) -> Response:
    group = request.path_params["group"]
    described = await pages.api.sagemaker("DescribeModelPackageGroup", ModelPackageGroupName=group)
    status = request.query_params.get("approval") or None
    versions = [
        item
        async for item in pages.api.every(
            "ListModelPackages",
            "ModelPackageSummaryList",
            limit=200,
            ModelPackageGroupName=group,
            ModelApprovalStatus=status,
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=100,
        )
    ]
    # each version's metadata (where teams keep accuracy and the like) and metric reports
    details: dict[str, dict[str, Any]] = {}
    for version in versions[:DESCRIBED_VERSIONS]:
        found = await pages.api.attempt(
            "DescribeModelPackage", ModelPackageName=version["ModelPackageArn"]
        )
        if not isinstance(found, SalviaError):
            details[version["ModelPackageArn"]] = found
    keys = sorted({k for d in details.values() for k in d.get("CustomerMetadataProperties") or {}})
    return pages.render(
        request,
        "package_group.html",
        title=group,
        group=described,
        versions=versions,
        details=details,
        metadata_keys=keys,
        approval=status,
        statuses=("Approved", "Rejected", "PendingManualApproval"),
    )


async def package(pages: Pages, request: Request) -> Response:
    group, version = request.path_params["group"], request.path_params["version"]
    described_group = await pages.api.sagemaker(
        "DescribeModelPackageGroup", ModelPackageGroupName=group
    )
    described = await pages.api.sagemaker(
        "DescribeModelPackage", ModelPackageName=version_arn(described_group, version)
    )
    return pages.render(
        request,
        "package.html",
        title=f"{group} v{version}",
        package=described,
        group=group,
        version=version,
        notice=request.query_params.get("notice"),
    )


def version_arn(group: dict[str, Any], version: str) -> str:
    """A versioned package's ARN, as SageMaker forms it from its group's."""
    head, _, name = group["ModelPackageGroupArn"].partition(":model-package-group/")
    return f"{head}:model-package/{name}/{version}"


async def approve(pages: Pages, request: Request) -> Response:
    group, version = request.path_params["group"], request.path_params["version"]
    form = await read_form(request)
    status, comment, arn = form.get("status", ""), form.get("comment", ""), form.get("arn", "")
    params: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": status}
    if comment:
        params["ApprovalDescription"] = comment
    await pages.api.sagemaker("UpdateModelPackage", **params)
    notice = urllib.parse.quote_plus(f"Version {version} is now {status}.")
    return RedirectResponse(
        f"{PREFIX}/model-registry/{group}/{version}?notice={notice}", status_code=303
    )


async def experiment(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    described = await pages.api.sagemaker("DescribeExperiment", ExperimentName=name)
    trials = [
        t
        async for t in pages.api.every(
            "ListTrials", "TrialSummaries", limit=200, ExperimentName=name, MaxResults=100
        )
    ]
    runs = []
    async for summary in pages.api.every(
        "ListTrialComponents",
        "TrialComponentSummaries",
        limit=RUNS_SHOWN,
        ExperimentName=name,
        MaxResults=100,
    ):
        runs.append(
            await pages.api.sagemaker(
                "DescribeTrialComponent", TrialComponentName=summary["TrialComponentName"]
            )
        )
    metric_names = sorted({m["MetricName"] for run in runs for m in run.get("Metrics", [])})
    metric = request.query_params.get("metric")
    metric = metric if metric in metric_names else (metric_names[0] if metric_names else None)
    stat = request.query_params.get("stat")
    stat = stat if stat in STATS else "Last"
    figure = None
    if metric:
        labels, values = [], []
        for run in runs:
            for summary in run.get("Metrics", []):
                if summary["MetricName"] == metric and summary.get(stat) is not None:
                    labels.append(run.get("DisplayName") or run["TrialComponentName"])
                    values.append(summary[stat])
        figure = charts.figure(
            [charts.bars(f"{metric} ({stat})", labels, values)], x_title="run", y_title=metric
        )
    parameter_names = sorted({p for run in runs for p in run.get("Parameters") or {}})
    series = await run_series(pages, runs, metric) if metric else None
    return pages.render(
        request,
        "experiment.html",
        series=series,
        title=name,
        experiment=described,
        trials=trials,
        runs=runs,
        metric_names=metric_names,
        metric=metric,
        stat=stat,
        stats=STATS,
        parameter_names=parameter_names,
        figure=figure,
        charts=True,
    )


async def run_series(
    pages: Pages, runs: list[dict[str, Any]], metric: str
) -> dict[str, Any] | None:
    """One line per run: the metric by step (BatchGetMetrics, at most 100 queries a call)."""
    logged = [r for r in runs if any(m["MetricName"] == metric for m in r.get("Metrics", []))]
    traces = []
    for start in range(0, len(logged), 100):
        batch = logged[start : start + 100]
        answer = await pages.api.metrics(
            "BatchGetMetrics",
            MetricQueries=[
                {
                    "MetricName": metric,
                    "ResourceArn": run["TrialComponentArn"],
                    "MetricStat": "Avg",
                    "Period": "IterationNumber",
                    "XAxisType": "IterationNumber",
                }
                for run in batch
            ],
        )
        for run, result in zip(batch, answer.get("MetricQueryResults", []), strict=False):
            if result.get("Status") in ("Complete", "Truncated") and result.get("MetricValues"):
                label = run.get("DisplayName") or run["TrialComponentName"]
                traces.append(charts.series(label, result["XAxisValues"], result["MetricValues"]))
    if not traces:
        return None  # logged without steps: the summary chart is the comparison
    return charts.figure(traces, x_title="step", y_title=metric)


async def trial_component(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    component = await pages.api.sagemaker("DescribeTrialComponent", TrialComponentName=name)
    traces = []
    errors: list[str] = []
    by_step = True
    for summary in component.get("Metrics", []):
        query = {
            "MetricName": summary["MetricName"],
            "ResourceArn": component["TrialComponentArn"],
            "MetricStat": "Avg",
            "Period": "IterationNumber",
            "XAxisType": "IterationNumber",
        }
        answer = await pages.api.metrics("BatchGetMetrics", MetricQueries=[query])
        result = answer["MetricQueryResults"][0]
        if result.get("Status") == "ValidationError":
            answer = await pages.api.metrics(
                "BatchGetMetrics", MetricQueries=[{**query, "XAxisType": "Timestamp"}]
            )
            result = answer["MetricQueryResults"][0]
            by_step = False
        if result.get("Status") not in ("Complete", "Truncated"):
            errors.append(f"{summary['MetricName']}: {result.get('Message', result.get('Status'))}")
            continue
        x = result["XAxisValues"] if by_step else [charts.iso(v) for v in result["XAxisValues"]]
        traces.append(charts.series(summary["MetricName"], x, result["MetricValues"]))
    figure = (
        charts.figure(traces, x_title="step" if by_step else "time (UTC)", time_axis=not by_step)
        if traces
        else None
    )
    return pages.render(
        request,
        "trial_component.html",
        title=name,
        component=component,
        figure=figure,
        metric_errors=errors,
        charts=True,
    )


async def artifact_labels(pages: Pages, vertices: list[dict[str, Any]]) -> dict[str, str]:
    """Artifacts are keyed by a hash: they are shown by their name, else their source's tail."""
    labels = {}
    for vertex in vertices[:LABELLED]:
        if vertex.get("LineageType") != "Artifact":
            continue
        found = await pages.api.attempt("DescribeArtifact", ArtifactArn=vertex["Arn"])
        if isinstance(found, SalviaError):
            continue
        uri = (found.get("Source") or {}).get("SourceUri", "")
        label = found.get("ArtifactName") or uri.rstrip("/").rsplit("/", 2)[-2:]
        labels[vertex["Arn"]] = label if isinstance(label, str) else "/".join(label)
    return labels


def layout(
    start: str,
    vertices: list[dict[str, Any]],
    edges: list[dict[str, Any]],
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Columns by distance from the start (ascendants left, descendants right), rows in order."""
    level = {start: 0}
    frontier = [start]
    while frontier:  # descendants: along the edges
        following = []
        for edge in edges:
            if edge["SourceArn"] in frontier and edge["DestinationArn"] not in level:
                level[edge["DestinationArn"]] = level[edge["SourceArn"]] + 1
                following.append(edge["DestinationArn"])
        frontier = following
    frontier = [start]
    while frontier:  # ascendants: against them
        following = []
        for edge in edges:
            if edge["DestinationArn"] in frontier and edge["SourceArn"] not in level:
                level[edge["SourceArn"]] = level[edge["DestinationArn"]] - 1
                following.append(edge["SourceArn"])
        frontier = following
    for vertex in vertices:
        level.setdefault(vertex["Arn"], 0)
    low = min(level.values())
    width, height, gap_x, gap_y = 190, 44, 60, 18
    rows: dict[int, int] = {}
    nodes: list[dict[str, Any]] = []
    by_arn = {v["Arn"]: v for v in vertices}
    by_arn.setdefault(start, {"Arn": start, "Type": "", "LineageType": ""})
    for arn, depth in sorted(level.items(), key=lambda item: (item[1], item[0])):
        column = depth - low
        row = rows.get(column, 0)
        rows[column] = row + 1
        vertex = by_arn.get(arn, {"Arn": arn, "Type": "", "LineageType": ""})
        name = (labels or {}).get(arn) or arn.rsplit("/", 1)[-1]
        nodes.append(
            {
                "arn": arn,
                "x": 10 + column * (width + gap_x),
                "y": 10 + row * (height + gap_y),
                "label": name if len(name) <= 28 else "…" + name[-26:],
                "kind": f"{vertex.get('LineageType', '')} · {vertex.get('Type', '')}".strip(" ·"),
                "focus": arn == start,
            }
        )
    place = {node["arn"]: node for node in nodes}
    lines = [
        {
            "x1": place[e["SourceArn"]]["x"] + width,
            "y1": place[e["SourceArn"]]["y"] + height / 2,
            "x2": place[e["DestinationArn"]]["x"],
            "y2": place[e["DestinationArn"]]["y"] + height / 2,
            "type": e.get("AssociationType", ""),
        }
        for e in edges
        if e["SourceArn"] in place and e["DestinationArn"] in place
    ]
    columns = max(node["x"] for node in nodes) + width + 10 if nodes else 200
    tallest = max(node["y"] for node in nodes) + height + 10 if nodes else 100
    return {
        "nodes": nodes,
        "lines": lines,
        "width": columns,
        "height": tallest,
        "node_width": width,
        "node_height": height,
    }


async def lineage(pages: Pages, request: Request) -> Response:
    arn = request.query_params.get("arn", "").strip()
    graph, error, vertices = None, None, []
    starts: dict[str, list[dict[str, Any]]] = {}
    if arn:
        try:
            entity = await lineage_entity(pages, arn)
            answer = await pages.api.sagemaker(
                "QueryLineage", StartArns=[entity], Direction="Both", IncludeEdges=True, MaxDepth=10
            )
            vertices = answer.get("Vertices", [])
            edges = answer.get("Edges", [])
            graph = layout(entity, vertices, edges, await artifact_labels(pages, vertices))
        except SalviaError as failure:
            error = failure
    else:
        for operation, key in (
            ("ListContexts", "ContextSummaries"),
            ("ListArtifacts", "ArtifactSummaries"),
            ("ListActions", "ActionSummaries"),
        ):
            found = await pages.api.attempt(operation, MaxResults=10, SortBy="CreationTime")
            starts[operation[4:]] = [] if isinstance(found, SalviaError) else found.get(key, [])
    return pages.render(
        request,
        "lineage.html",
        title="Lineage",
        arn=arn,
        graph=graph,
        error=error,
        vertices=vertices,
        starts=starts,
    )


_ENTITY = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:[^:]*:\d{12}:(experiment-trial-component|artifact|action|context)/"
)


async def lineage_entity(pages: Pages, arn: str) -> str:
    """The lineage entity that stands for `arn`: itself, or the context, artifact, action or
    trial component whose source it is (an endpoint's context, a job's trial component)."""
    if _ENTITY.match(arn):
        return arn
    for operation, key, member in (
        ("ListContexts", "ContextSummaries", "ContextArn"),
        ("ListArtifacts", "ArtifactSummaries", "ArtifactArn"),
        ("ListActions", "ActionSummaries", "ActionArn"),
    ):
        found = await pages.api.attempt(operation, SourceUri=arn, MaxResults=1)
        if not isinstance(found, SalviaError) and found.get(key):
            return str(found[key][0][member])
    found = await pages.api.attempt("ListTrialComponents", SourceArn=arn, MaxResults=1)
    if not isinstance(found, SalviaError) and found.get("TrialComponentSummaries"):
        return str(found["TrialComponentSummaries"][0]["TrialComponentArn"])
    return arn  # QueryLineage says in words why it is not an entity


def routes(pages: Pages) -> list[Route]:
    return [
        Route("/model-registry/{group}", pages.bind(package_group)),
        Route("/model-registry/{group}/{version}", pages.bind(package)),
        Route("/model-registry/{group}/{version}/approval", pages.bind(approve), methods=["POST"]),
        Route("/experiments/{name}", pages.bind(experiment)),
        Route("/trial-components/{name}", pages.bind(trial_component)),
        Route("/lineage", pages.bind(lineage)),
    ]
