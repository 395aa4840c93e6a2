"""How each error code travels on the wire: one table of HTTP statuses, one JSON error shape."""

from __future__ import annotations

import uuid

import orjson
from starlette.responses import Response

from salvia.errors import SalviaError

# SageMaker's control plane answers 400 for every modeled and validation error (none of its
# exceptions declares an httpStatusCode), 501 for what Salvia has not built, 500 for our bugs.
JSON_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "SerializationException": 400,
    "ResourceNotFound": 400,
    "ResourceInUse": 400,
    "ResourceLimitExceeded": 400,
    "ConflictException": 400,
    "ThrottlingException": 400,
    "UnknownOperationException": 400,
    "IncompleteSignatureException": 400,
    "ResourceNotFoundException": 400,  # CloudWatch Logs' modeled errors: 400 there too
    "InvalidParameterException": 400,
    "NotImplementedException": 501,
    "InternalFailure": 500,
}

JSON_CONTENT_TYPE = "application/x-amz-json-1.1"


def new_request_id() -> str:
    return str(uuid.uuid4())


def error_response(
    error: SalviaError,
    request_id: str,
    *,
    status: int | None = None,
    content_type: str = JSON_CONTENT_TYPE,
) -> Response:
    body = orjson.dumps({"__type": error.code, "message": error.message})
    return Response(
        body,
        status_code=status or JSON_STATUS.get(error.code, 400),
        media_type=content_type,
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.code},
    )
