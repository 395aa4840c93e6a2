"""AWS JSON 1.1: `POST /` with `X-Amz-Target: <Prefix>.<Operation>`, a JSON body in and out."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from botocore.model import OperationModel, ServiceModel
from starlette.requests import Request
from starlette.responses import Response

from salvia.api.errors import JSON_CONTENT_TYPE, error_response, new_request_id
from salvia.api.serialize import shape_output
from salvia.api.sigv4_claims import parse_authorization
from salvia.api.validation import RequestValidator
from salvia.errors import (
    InternalFailure,
    NotImplementedOperation,
    SalviaError,
    SerializationException,
    UnknownOperationException,
    ValidationException,
)
from salvia.resources.registry import Handler

log = logging.getLogger(__name__)

Runner = Callable[[Handler, dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_BODY = 6 * 1024 * 1024  # SageMaker's control plane caps request payloads well below this
# the scope key under which the access guard leaves a JSON call's parsed body (an object)
PARSED_PARAMS = "salvia.params"


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The whole body, refusing (not buffering) anything past `limit`."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValidationException(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SerializationException(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SerializationException("The request body must be a JSON object.")
    return value


class JsonProtocol:
    """Dispatches one service's operations; every failure becomes an error of SageMaker's shape."""

    def __init__(self, model: ServiceModel, handlers: Mapping[str, Handler], run: Runner) -> None:
        self.model = model
        self.prefix = model.metadata["targetPrefix"]
        self.handlers = dict(handlers)
        self.validator = RequestValidator()
        self._run = run
        self._names = set(model.operation_names)
        self._operations: dict[str, OperationModel] = {}
        unknown = set(self.handlers) - self._names
        if unknown:
            raise RuntimeError(f"handlers for operations not in the model: {sorted(unknown)}")

    def operation(self, name: str) -> OperationModel:
        operation = self._operations.get(name)
        if operation is None:
            operation = self._operations[name] = self.model.operation_model(name)
        return operation

    async def handle(self, request: Request, target: str) -> Response:
        request_id = new_request_id()
        try:
            body = orjson.dumps(await self._dispatch(request, target))
            return Response(
                body, media_type=JSON_CONTENT_TYPE, headers={"x-amzn-RequestId": request_id}
            )
        except SalviaError as error:
            return error_response(error, request_id)
        except Exception:
            log.exception("internal error in %s (request %s)", target, request_id)
            return error_response(
                InternalFailure(f"An internal error occurred (request {request_id})."), request_id
            )

    async def call(self, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one operation as a request would run it: the same validation, the same handler and
        the same shaped answer. In-process clients of the public API (Studio) come in here."""
        if name not in self._names:
            raise UnknownOperationException(f"Operation {name[:200]} is not recognized.")
        handler = self.handlers.get(name)
        if handler is None:
            raise NotImplementedOperation(name, self.model.service_id)
        operation = self.operation(name)
        validated = self.validator.validate(operation.input_shape, params)
        result: dict[str, Any] = shape_output(
            operation.output_shape, await self._run(handler, validated)
        )
        return result

    async def _dispatch(self, request: Request, target: str) -> dict[str, Any]:
        prefix, _, name = target.rpartition(".")
        if prefix != self.prefix or name not in self._names:
            raise UnknownOperationException(f"Operation {target[:200]} is not recognized.")
        params = request.scope.get(PARSED_PARAMS)
        if params is None:  # (the access guard has verified the signature and parsed the body)
            parse_authorization(request.headers.get("authorization"))
        if name not in self.handlers:
            raise NotImplementedOperation(name, self.model.service_id)
        if params is None:
            params = parse_json_object(await read_body(request))
        return await self.call(name, params)
