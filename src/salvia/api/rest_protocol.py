"""AWS REST-JSON: the operation comes from method and URI template (sagemaker-metrics, and later
sagemaker-runtime and the feature store runtime).

Members located in the URI, query string or headers are read from there; the rest come from the
JSON body. An operation of the model that Salvia has not built answers 501 naming it.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

import orjson
import regex
from botocore.model import OperationModel, ServiceModel
from starlette.requests import Request
from starlette.responses import Response

from salvia.api.errors import error_response, new_request_id
from salvia.api.json_protocol import Runner, parse_json_object, read_body
from salvia.api.serialize import shape_output
from salvia.api.sigv4_claims import parse_authorization
from salvia.api.validation import RequestValidator
from salvia.errors import InternalFailure, NotImplementedOperation, SalviaError
from salvia.resources.registry import Handler

log = logging.getLogger(__name__)


def _template(uri: str) -> regex.Pattern[str]:
    path = uri.split("?", 1)[0]
    pattern = regex.sub(
        r"\\\{(\w+)(\\\+)?\\\}",
        lambda m: f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)",
        regex.escape(path),
    )
    return regex.compile(pattern)


def _scalar(type_name: str, text: str) -> Any:
    """URI, query and header members arrive as text; give the validator their JSON types."""
    try:
        if type_name in {"integer", "long"}:
            return int(text)
        if type_name in {"float", "double"}:
            return float(text)
    except ValueError:
        return text  # the validator names the member and the type it wanted
    if type_name == "boolean":
        return {"true": True, "false": False}.get(text.lower(), text)
    return text


class RestJsonProtocol:
    def __init__(self, model: ServiceModel, handlers: Mapping[str, Handler], run: Runner) -> None:
        self.model = model
        self.handlers = dict(handlers)
        self.validator = RequestValidator()
        self._run = run
        self._routes: list[tuple[str, regex.Pattern[str], OperationModel]] = []
        for name in model.operation_names:
            operation = model.operation_model(name)
            self._routes.append(
                (operation.http["method"], _template(operation.http["requestUri"]), operation)
            )
        unknown = set(self.handlers) - set(model.operation_names)
        if unknown:
            raise RuntimeError(f"handlers for operations not in the model: {sorted(unknown)}")

    def match(self, method: str, path: str) -> tuple[OperationModel, dict[str, str]] | None:
        for route_method, pattern, operation in self._routes:
            if route_method == method:
                found = pattern.fullmatch(path)
                if found:
                    labels = {k: urllib.parse.unquote(v) for k, v in found.groupdict().items()}
                    return operation, labels
        return None

    async def handle(
        self, request: Request, operation: OperationModel, labels: dict[str, str]
    ) -> Response:
        request_id = new_request_id()
        try:
            parse_authorization(request.headers.get("authorization"))
            handler = self.handlers.get(operation.name)
            if handler is None:
                raise NotImplementedOperation(operation.name, self.model.service_id)
            params = await self._input(request, operation, labels)
            result = await self._run(handler, params)
            return self._output(operation, result, request_id)
        except SalviaError as error:
            return error_response(error, request_id, content_type="application/json")
        except Exception:
            log.exception("internal error in %s (request %s)", operation.name, request_id)
            failure = InternalFailure(f"An internal error occurred (request {request_id}).")
            return error_response(failure, request_id, content_type="application/json")

    async def call(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one operation from in-process clients (Studio): the request's members as a dict,
        validated and answered as over HTTP (located members travel in the dict too)."""
        handler = self.handlers.get(name)
        if handler is None:
            raise NotImplementedOperation(name, self.model.service_id)
        operation = self.model.operation_model(name)
        validated = self.validator.validate(operation.input_shape, params)
        result: dict[str, Any] = shape_output(
            operation.output_shape, await self._run(handler, validated)
        )
        return result

    async def _input(
        self, request: Request, operation: OperationModel, labels: dict[str, str]
    ) -> dict[str, Any]:
        shape = operation.input_shape
        if shape is None:
            return {}
        located: dict[str, Any] = {}
        in_body = False
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri" and wire in labels:
                located[name] = _scalar(member.type_name, labels[wire])
            elif location == "querystring" and wire in request.query_params:
                located[name] = _scalar(member.type_name, request.query_params[wire])
            elif location == "header" and wire in request.headers:
                located[name] = _scalar(member.type_name, request.headers[wire])
            elif location is None:
                in_body = True
        body = parse_json_object(await read_body(request)) if in_body else {}
        return self.validator.validate(shape, {**body, **located})

    @staticmethod
    def _output(operation: OperationModel, result: dict[str, Any], request_id: str) -> Response:
        shape = operation.output_shape
        headers = {"x-amzn-RequestId": request_id}
        body: dict[str, Any] = {}
        if shape is not None:
            for name, value in shape_output(shape, result).items():
                member = shape.members[name]
                if member.serialization.get("location") == "header":
                    headers[member.serialization.get("name", name)] = str(value)
                else:
                    body[name] = value
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)
