"""AWS's query protocol (IAM, STS): `POST /` with a form body `Action=CreateUser&Version=...`,
answered in XML as botocore's query parser reads it.

Inputs are read from the form by the operation's input shape (`Tags.member.1.Key`, maps as
`entry.N.key`), outputs written by its output shape inside `<OpResponse><OpResult>` with
`ResponseMetadata`; errors as `<ErrorResponse><Error><Code>`. The service is chosen by
`Version` (IAM 2010-05-08, STS 2011-06-15).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

from botocore.model import ServiceModel, Shape
from starlette.requests import Request
from starlette.responses import Response

from salvia.api.errors import new_request_id
from salvia.api.json_protocol import Runner, read_body
from salvia.errors import InternalFailure, InvalidInput, NotImplementedOperation, SalviaError
from salvia.resources.registry import Handler

log = logging.getLogger(__name__)

QUERY_STATUS = {
    "NoSuchEntity": 404,
    "EntityAlreadyExists": 409,
    "DeleteConflict": 409,
    "LimitExceeded": 409,
    "ResourceLimitExceeded": 409,
    "MalformedPolicyDocument": 400,
    "PasswordPolicyViolation": 400,
    "InvalidInput": 400,
    "ValidationError": 400,
    "AccessDenied": 403,
    "NotImplemented": 501,
    "InternalFailure": 500,
}


def _input(shape: Shape | None, form: Mapping[str, str], prefix: str = "") -> Any:
    if shape is None:
        return {}
    kind = shape.type_name
    if kind == "structure":
        result: dict[str, Any] = {}
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            key = f"{prefix}{wire}"
            if member.type_name in ("structure", "list", "map"):
                value = _input(member, form, key + ".")
                if value not in (None, {}, []) or any(k.startswith(key + ".") for k in form):
                    result[name] = value
            elif key in form:
                result[name] = _scalar(member, form[key])
        return result
    if kind == "list":
        base = prefix if shape.serialization.get("flattened") else f"{prefix}member."
        items = []
        index = 1
        while any(k == f"{base}{index}" or k.startswith(f"{base}{index}.") for k in form):
            element = shape.member
            if element.type_name in ("structure", "list", "map"):
                items.append(_input(element, form, f"{base}{index}."))
            else:
                items.append(_scalar(element, form.get(f"{base}{index}", "")))
            index += 1
        return items
    if kind == "map":
        entries: dict[str, Any] = {}
        index = 1
        while f"{prefix}entry.{index}.key" in form:
            entries[form[f"{prefix}entry.{index}.key"]] = form.get(f"{prefix}entry.{index}.value")
            index += 1
        return entries
    return None


def _scalar(shape: Shape, text: str) -> Any:
    if shape.type_name in ("integer", "long"):
        try:
            return int(text)
        except ValueError:
            return text
    if shape.type_name == "boolean":
        return text.lower() == "true"
    return text


def _text(shape: Shape, value: Any) -> str:
    if shape.type_name == "timestamp":
        when = value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if shape.type_name == "boolean":
        return "true" if value else "false"
    return str(value)


def _output(parent: ET.Element, shape: Shape, value: Any) -> None:
    kind = shape.type_name
    if kind == "structure":
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                child = ET.SubElement(parent, member.serialization.get("name", name))
                _output(child, member, value[name])
    elif kind == "list":
        for item in value:
            element = ET.SubElement(parent, shape.member.serialization.get("name", "member"))
            _output(element, shape.member, item)
    elif kind == "map":
        for key, item in value.items():
            entry = ET.SubElement(parent, "entry")
            ET.SubElement(entry, "key").text = str(key)
            _output(ET.SubElement(entry, "value"), shape.value, item)
    else:
        parent.text = _text(shape, value)


class QueryProtocol:
    """Dispatches the query-protocol services Salvia serves, by their API version."""

    def __init__(self, services: Mapping[str, tuple[ServiceModel, Mapping[str, Handler]]],
                 run: Runner) -> None:  # fmt: skip
        self.services = {
            model.api_version: (model, dict(handlers)) for model, handlers in services.values()
        }
        self._run = run

    async def call(self, service: str, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one operation of `service` ("iam", "sts") for an in-process client (Studio):
        the same handler and answer as a form of those members would get, before XML."""
        for model, handlers in self.services.values():
            if model.metadata.get("endpointPrefix") == service:
                if action not in model.operation_names:
                    raise InvalidInput(f"Could not find operation {action[:80]}.")
                handler = handlers.get(action)
                if handler is None:
                    raise NotImplementedOperation(action, model.service_id)
                return await self._run(handler, params)
        raise InvalidInput(f"Service {service[:40]!r} is not served.")

    async def handle(self, request: Request) -> Response:
        request_id = new_request_id()
        namespace = ""
        try:
            form = dict(parse_qsl((await read_body(request)).decode("utf-8", "replace"),
                                  keep_blank_values=True))  # fmt: skip
            action, version = form.get("Action", ""), form.get("Version", "")
            found = self.services.get(version)
            if found is None:
                raise _QueryError("InvalidAction", f"Version {version[:40]!r} is not served.")
            model, handlers = found
            namespace = model.metadata.get("xmlNamespace", "")
            if action not in model.operation_names:
                raise _QueryError("InvalidAction", f"Could not find operation {action[:80]}.")
            handler = handlers.get(action)
            if handler is None:
                raise _QueryError(
                    "NotImplemented",
                    f"{model.service_id} operation {action} is not implemented by Salvia yet.",
                )
            operation = model.operation_model(action)
            result = await self._run(handler, _input(operation.input_shape, form))
            root = ET.Element(f"{action}Response", xmlns=namespace)
            shape = operation.output_shape
            if shape is not None:
                wrapper = ET.SubElement(
                    root, shape.serialization.get("resultWrapper", f"{action}Result")
                )
                _output(wrapper, shape, result)
            metadata = ET.SubElement(root, "ResponseMetadata")
            ET.SubElement(metadata, "RequestId").text = request_id
            return _xml(root, 200, request_id)
        except _QueryError as error:
            return _error(error.code, error.message, request_id, namespace)
        except SalviaError as error:
            code = "ValidationError" if error.code == "ValidationException" else error.code
            code = "LimitExceeded" if code == "ResourceLimitExceeded" else code
            return _error(code, error.message, request_id, namespace)
        except Exception:
            log.exception("internal error in a query-protocol request %s", request_id)
            failure = InternalFailure(f"An internal error occurred (request {request_id}).")
            return _error(failure.code, failure.message, request_id, namespace)


class _QueryError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _xml(root: ET.Element, status: int, request_id: str) -> Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, status_code=status, media_type="text/xml",
                    headers={"x-amzn-RequestId": request_id})  # fmt: skip


def _error(code: str, message: str, request_id: str, namespace: str) -> Response:
    root = (
        ET.Element("ErrorResponse", xmlns=namespace) if namespace else ET.Element("ErrorResponse")
    )
    error = ET.SubElement(root, "Error")
    ET.SubElement(error, "Type").text = (
        "Sender" if QUERY_STATUS.get(code, 400) < 500 else "Receiver"
    )
    ET.SubElement(error, "Code").text = code
    ET.SubElement(error, "Message").text = message
    ET.SubElement(root, "RequestId").text = request_id
    return _xml(root, QUERY_STATUS.get(code, 400), request_id)
