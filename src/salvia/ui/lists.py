"""List pages, paged, sorted and filtered by the API itself (NextToken, MaxResults, SortBy,
SortOrder, NameContains, StatusEquals), so a page over 50,000 rows costs what one over 50 does.

Which filters and sort keys a list offers is read from the operation's input shape in
botocore's model, never restated here.
"""

from __future__ import annotations

import functools
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from botocore.model import ServiceModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from salvia.ui.pages import PREFIX, Pages, busy

PAGE_SIZES = (10, 25, 50, 100)


@dataclass(frozen=True)
class Column:
    title: str
    member: str  # of the summary; dotted for nested members
    link: str = ""  # a page path with {value} (the member's value, quoted)
    kind: str = "text"  # text | time | status | arn
    sort: str = ""  # the SortBy value that orders by this column, where the API has one


@dataclass(frozen=True)
class ListSpec:
    slug: str
    title: str
    operation: str
    result_key: str
    columns: tuple[Column, ...]
    # filters given as page parameters, each passed to the API member of that name
    extra_filters: tuple[tuple[str, str], ...] = ()  # (query parameter, API member)
    fixed: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@functools.cache
def _model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("sagemaker")


@functools.cache
def _members(operation: str) -> dict[str, Any]:
    return dict(_model().operation_model(operation).input_shape.members)


def options(operation: str, member: str) -> list[str]:
    shape = _members(operation).get(member)
    return list(shape.enum) if shape is not None and shape.enum else []


def has_member(operation: str, member: str) -> bool:
    return member in _members(operation)


def value_of(item: dict[str, Any], member: str) -> Any:
    value: Any = item
    for part in member.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _job(slug: str, title: str, operation: str, key: str, name: str, status: str) -> ListSpec:
    return ListSpec(
        slug,
        title,
        operation,
        key,
        (
            Column("Name", name, f"{slug}/{{value}}", sort="Name"),
            Column("Status", status, kind="status", sort="Status"),
            Column("Created", "CreationTime", kind="time", sort="CreationTime"),
            Column("Last modified", "LastModifiedTime", kind="time"),
        ),
    )


SPECS: dict[str, ListSpec] = {
    spec.slug: spec
    for spec in (
        _job(
            "training-jobs",
            "Training jobs",
            "ListTrainingJobs",
            "TrainingJobSummaries",
            "TrainingJobName",
            "TrainingJobStatus",
        ),
        _job(
            "tuning-jobs",
            "Hyperparameter tuning jobs",
            "ListHyperParameterTuningJobs",
            "HyperParameterTuningJobSummaries",
            "HyperParameterTuningJobName",
            "HyperParameterTuningJobStatus",
        ),
        _job(
            "processing-jobs",
            "Processing jobs",
            "ListProcessingJobs",
            "ProcessingJobSummaries",
            "ProcessingJobName",
            "ProcessingJobStatus",
        ),
        _job(
            "transform-jobs",
            "Batch transform jobs",
            "ListTransformJobs",
            "TransformJobSummaries",
            "TransformJobName",
            "TransformJobStatus",
        ),
        _job(
            "endpoints",
            "Endpoints",
            "ListEndpoints",
            "Endpoints",
            "EndpointName",
            "EndpointStatus",
        ),
        ListSpec(
            "models",
            "Models",
            "ListModels",
            "Models",
            (
                Column("Name", "ModelName", "models/{value}", sort="Name"),
                Column("Created", "CreationTime", kind="time", sort="CreationTime"),
            ),
        ),
        ListSpec(
            "endpoint-configs",
            "Endpoint configurations",
            "ListEndpointConfigs",
            "EndpointConfigs",
            (
                Column("Name", "EndpointConfigName", "endpoint-configs/{value}", sort="Name"),
                Column("Created", "CreationTime", kind="time", sort="CreationTime"),
            ),
        ),
        ListSpec(
            "model-registry",
            "Model registry",
            "ListModelPackageGroups",
            "ModelPackageGroupSummaryList",
            (
                Column("Group", "ModelPackageGroupName", "model-registry/{value}", sort="Name"),
                Column("Description", "ModelPackageGroupDescription"),
                Column("Status", "ModelPackageGroupStatus", kind="status"),
                Column("Created", "CreationTime", kind="time"),
            ),
        ),
        ListSpec(
            "experiments",
            "Experiments",
            "ListExperiments",
            "ExperimentSummaries",
            (
                Column("Name", "ExperimentName", "experiments/{value}", sort="Name"),
                Column("Display name", "DisplayName"),
                Column("Created", "CreationTime", kind="time"),
                Column("Last modified", "LastModifiedTime", kind="time"),
            ),
        ),
        ListSpec(
            "trial-components",
            "Trial components",
            "ListTrialComponents",
            "TrialComponentSummaries",
            (
                Column("Name", "TrialComponentName", "trial-components/{value}", sort="Name"),
                Column("Display name", "DisplayName"),
                Column("Status", "Status.PrimaryStatus", kind="status"),
                Column("Source", "TrialComponentSource.SourceArn", kind="arn"),
                Column("Created", "CreationTime", kind="time"),
            ),
            extra_filters=(("experiment", "ExperimentName"), ("trial", "TrialName")),
            note="Filter by experiment or trial; the API lists trial components without a name "
            "filter.",
        ),
    )
}


def page_params(request: Request, spec: ListSpec) -> tuple[dict[str, Any], dict[str, str]]:
    """The API request for this page, and the page's own parameters (to build links)."""
    query = request.query_params
    state: dict[str, str] = {}
    params: dict[str, Any] = dict(spec.fixed)
    size = query.get("size", "25")
    state["size"] = size if size.isdigit() and int(size) in PAGE_SIZES else "25"
    params["MaxResults"] = int(state["size"])
    sorts = options(spec.operation, "SortBy")
    if query.get("sort") in sorts:
        state["sort"] = query["sort"]
        params["SortBy"] = query["sort"]
    if query.get("order") in {"Ascending", "Descending"}:
        state["order"] = query["order"]
        params["SortOrder"] = query["order"]
    if query.get("q") and has_member(spec.operation, "NameContains"):
        state["q"] = query["q"]
        params["NameContains"] = query["q"]
    if query.get("status") and has_member(spec.operation, "StatusEquals"):
        state["status"] = query["status"]
        params["StatusEquals"] = query["status"]
    for parameter, member in spec.extra_filters:
        if query.get(parameter):
            state[parameter] = query[parameter]
            params[member] = query[parameter]
    if query.get("token"):
        params["NextToken"] = query["token"]
    return params, state


def link(path: str, state: dict[str, str], **changes: str | None) -> str:
    merged = {**state, **changes}
    return path + "?" + urllib.parse.urlencode({k: v for k, v in merged.items() if v})


async def list_view(pages: Pages, request: Request, spec: ListSpec) -> Response:
    params, state = page_params(request, spec)
    answer = await pages.api.sagemaker(spec.operation, **params)
    path = f"{PREFIX}/{spec.slug}"
    token = answer.get("NextToken")
    items = answer.get(spec.result_key, [])
    status = next((c.member for c in spec.columns if c.kind == "status"), None)
    return pages.render(
        request,
        "list.html",
        # rows whose status is moving are renewed in place until they settle
        refresh="#list tbody",
        live=status is not None and any(busy(value_of(item, status)) for item in items),
        spec=spec,
        items=items,
        state=state,
        path=path,
        next_link=link(path, state, token=token) if token else "",
        first_link=link(path, state) if params.get("NextToken") else "",
        sorts=options(spec.operation, "SortBy"),
        statuses=options(spec.operation, "StatusEquals"),
        name_filter=has_member(spec.operation, "NameContains"),
        page_sizes=PAGE_SIZES,
        value_of=value_of,
        link=link,
        quote=lambda value: urllib.parse.quote(str(value), safe=""),
    )


def routes(pages: Pages) -> list[Route]:
    def view(spec: ListSpec) -> Any:
        async def endpoint(request: Request) -> Response:
            return await list_view(pages, request, spec)

        return endpoint

    return [Route(f"/{slug}", view(spec)) for slug, spec in SPECS.items()]
