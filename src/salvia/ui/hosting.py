"""Hosting pages: endpoints (variants, live invocation figures, test invoke, data capture),
models and endpoint configurations."""

from __future__ import annotations

import urllib.parse

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from salvia.errors import SalviaError
from salvia.ui.pages import PREFIX, Pages, busy


async def endpoint(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    described = await pages.api.sagemaker("DescribeEndpoint", EndpointName=name)
    config = await pages.api.attempt(
        "DescribeEndpointConfig", EndpointConfigName=described.get("EndpointConfigName", "")
    )
    variants = described.get("ProductionVariants", [])
    weights = None
    if variants:
        weights = {
            "data": [
                {
                    "type": "pie",
                    "labels": [v["VariantName"] for v in variants],
                    "values": [v.get("CurrentWeight", 0) for v in variants],
                    "hole": 0.4,
                }
            ],
            "layout": {"margin": {"l": 10, "r": 10, "t": 10, "b": 10}, "showlegend": True},
        }
    content_type = "text/csv"
    if not isinstance(config, SalviaError):
        capture = config.get("DataCaptureConfig") or {}
        types = (capture.get("CaptureContentTypeHeader") or {}).get("CsvContentTypes") or []
        content_type = types[0] if types else content_type
    return pages.render(
        request,
        "endpoint.html",
        title=name,
        # while it is being created or updated, its status and variants are renewed in place
        refresh="#endpoint-status, #variants",
        live=busy(described.get("EndpointStatus")),
        endpoint=described,
        config=config,
        config_error=config if isinstance(config, SalviaError) else None,
        weights=weights,
        charts=True,
        # through Studio, which invokes as the signed-in user in the authenticated mode
        invoke_url=f"{PREFIX}/endpoints/{urllib.parse.quote(name, safe='')}/invoke",
        content_type=content_type,
    )


async def invoke(pages: Pages, request: Request) -> Response:
    """The test-invoke form's post: the runtime's answer as it is, or a refusal in its shape."""
    try:
        return await pages.api.invoke(request, request.path_params["name"])
    except SalviaError as error:
        status = 403 if error.code == "AccessDeniedException" else 400
        body = orjson.dumps({"__type": error.code, "message": error.message})
        return Response(body, status_code=status, media_type="application/json")


async def download(pages: Pages, request: Request) -> Response:
    bucket, key = request.path_params["bucket"], request.path_params["key"]
    return await pages.api.download(request, bucket, key)


async def model(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    described = await pages.api.sagemaker("DescribeModel", ModelName=name)
    containers = described.get("Containers") or (
        [described["PrimaryContainer"]] if described.get("PrimaryContainer") else []
    )
    return pages.render(request, "model.html", title=name, model=described, containers=containers)


async def endpoint_config(pages: Pages, request: Request) -> Response:
    name = request.path_params["name"]
    described = await pages.api.sagemaker("DescribeEndpointConfig", EndpointConfigName=name)
    return pages.render(request, "endpoint_config.html", title=name, config=described)


def routes(pages: Pages) -> list[Route]:
    return [
        Route("/endpoints/{name}", pages.bind(endpoint)),
        Route("/endpoints/{name}/invoke", pages.bind(invoke), methods=["POST"]),
        Route("/models/{name}", pages.bind(model)),
        Route("/objects/{bucket}/{key:path}", pages.bind(download)),
        Route("/endpoint-configs/{name}", pages.bind(endpoint_config)),
    ]
