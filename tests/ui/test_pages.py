"""Studio's page logic that needs no browser: list parameters, the lineage layout, links."""

from __future__ import annotations

from starlette.requests import Request

from salvia.ui.governance import layout
from salvia.ui.lists import SPECS, page_params
from salvia.ui.pages import object_path


def request(query: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode(),
                    "headers": []})  # fmt: skip


def test_list_parameters_become_the_api_members_the_operation_declares() -> None:
    params, state = page_params(
        request("q=fox&status=Failed&sort=Name&order=Ascending&size=50&token=abc"),
        SPECS["training-jobs"],
    )
    assert params == {
        "MaxResults": 50,
        "NameContains": "fox",
        "StatusEquals": "Failed",
        "SortBy": "Name",
        "SortOrder": "Ascending",
        "NextToken": "abc",
    }
    assert "token" not in state  # links start from the first page unless they carry one


def test_what_an_operation_does_not_declare_is_not_sent() -> None:
    # ListTrialComponents has no NameContains, StatusEquals or SortBy=Status
    params, _ = page_params(
        request("q=fox&status=Failed&sort=Status&size=7&experiment=exp"),
        SPECS["trial-components"],
    )
    assert params == {"MaxResults": 25, "ExperimentName": "exp"}


def test_lineage_places_ascendants_left_and_descendants_right() -> None:
    edges = [
        {"SourceArn": "data", "DestinationArn": "job", "AssociationType": "ContributedTo"},
        {"SourceArn": "job", "DestinationArn": "model", "AssociationType": "Produced"},
        {"SourceArn": "image", "DestinationArn": "job", "AssociationType": "ContributedTo"},
    ]
    vertices = [
        {"Arn": a, "Type": "", "LineageType": "Artifact"} for a in ("data", "image", "model")
    ]
    graph = layout("job", vertices, edges)
    x = {node["arn"]: node["x"] for node in graph["nodes"]}
    assert x["data"] == x["image"] < x["job"] < x["model"]
    assert [node["arn"] for node in graph["nodes"] if node["focus"]] == ["job"]
    assert len(graph["lines"]) == 3


def test_s3_objects_link_to_the_same_address() -> None:
    assert object_path("s3://bucket/a b/model.tar.gz") == "/bucket/a%20b/model.tar.gz"
    assert object_path("s3://bucket/prefix/") == ""
    assert object_path("file:///x") == ""
