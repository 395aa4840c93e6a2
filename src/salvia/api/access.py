"""The access guard: every request of the authenticated mode passes here before any protocol.

It has the request's signature checked (`access_signatures`: SigV4 against the key's secret, the
clock, replays; an S3 body is checked as it streams, chunk signatures included), evaluates the
caller's policies on the (action, resource) pairs the request asks for, and records mutating
calls and refusals in the audit trail. Refusals are answered in the shape of the protocol the
request was meant for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

import orjson
from starlette.responses import Response

from salvia.api import access_map, access_s3
from salvia.api import s3_xml as xml
from salvia.api.access_signatures import Call, Signatures, classify_reads, refusal
from salvia.api.asgi import replay_body
from salvia.api.errors import new_request_id
from salvia.api.json_protocol import PARSED_PARAMS
from salvia.api.s3_xml import S3Error
from salvia.api.sigv4_claims import SignatureRefused, SignedRequest
from salvia.config import Settings
from salvia.errors import IncompleteSignature
from salvia.iam import (
    ALLOW,
    AuditEvent,
    AuditTrail,
    IdentityStore,
    Principal,
    RequestContext,
    context_key,
    current_principal,
    evaluate,
)

if TYPE_CHECKING:
    from salvia.api.router import Router

Scope = Any
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 6 * 1024 * 1024 + 1024
_XML_CODE = re.compile(rb"<Code>([A-Za-z0-9.]{1,100})</Code>")
SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"
# where jobs fetch their execution role's credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI)
CREDENTIALS_PATH = "/_salvia/credentials"
# the error codes of the query protocols (IAM, STS) for the JSON protocols' codes
_QUERY_CODES = {
    "UnrecognizedClientException": "InvalidClientTokenId",
    "InvalidSignatureException": "SignatureDoesNotMatch",
    "IncompleteSignatureException": "IncompleteSignature",
    "MissingAuthenticationTokenException": "MissingAuthenticationToken",
    "AccessDeniedException": "AccessDenied",
}


class AccessGuard:
    """Authenticates and authorizes; thread-safe (its caches hold whole entries)."""

    def __init__(
        self,
        settings: Settings,
        identities: IdentityStore,
        audit: AuditTrail,
        tags_of: Callable[[str], list[tuple[str, str]]],
        virtual_host_suffixes: tuple[str, ...] = ("localhost",),
    ) -> None:
        self.settings = settings
        self.identities = identities
        self.audit = audit
        self.tags_of = tags_of
        self.signatures = Signatures(identities)
        self.suffixes = virtual_host_suffixes
        # (principal, action, resource) -> decision, for principals whose policies have no
        # conditions or variables; dropped on any change of identities or policies
        self._decisions: dict[tuple[str, str, str], str] = {}
        self._services: dict[str, str] = {}  # JSON target prefix -> IAM's service prefix
        identities.on_change(self._decisions.clear)

    # -- the request path ------------------------------------------------------------------
    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, app: App, router: Router
    ) -> None:
        if scope["path"] == CREDENTIALS_PATH:
            await self._credentials(scope, receive, send)
            return
        call = self._classify(scope, router)
        if call is None:  # health checks, Prometheus scrapes, Studio's own pages
            await app(scope, receive, send)
            return
        if call.kind == "studio":
            closed = Response(
                "This Studio does not sign its users in, so it is closed in authenticated mode; "
                "use the API with signed requests (boto3, the SageMaker SDK, the salvia "
                "command).",
                status_code=403,
                media_type="text/plain",
            )
            await closed(scope, receive, send)
            return
        try:
            if call.needs_body:
                message = await receive()
                if message["type"] == "http.request" and not message.get("more_body", False):
                    call.body = message.get("body", b"")  # the whole body in one message
                    if len(call.body) > MAX_BODY:
                        raise _too_large(MAX_BODY)
                else:
                    call.body = await _read(receive, message)
                if call.kind == "query":
                    call.params = dict(parse_qsl(call.body.decode("utf-8", "replace")))
                    call.operation = str(call.params.get("Action", ""))
            signed = self.signatures.authenticate(scope, call)
            self._authorize(scope, call)
        except (SignatureRefused, IncompleteSignature) as error:
            refused = (
                refusal(error.code, error.message, "AuthorizationHeaderMalformed", 400)
                if isinstance(error, IncompleteSignature)
                else error
            )
            code = refused.s3_code if call.kind == "s3" else refused.code
            self._record(scope, call, code, refused.message)
            response = self._refuse(call, refused)
            if call.body is None and _has_body(scope):
                # refused before its body was read: what the client still sends cannot be told
                # from its next request on this connection
                response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        if call.body is not None:
            receive = replay_body(call.body, receive)
        elif call.kind == "s3":
            receive = self._checked_body(call, signed, receive)
        token = current_principal.set(call.principal)
        try:
            if call.read_only:  # not audited: nothing to watch
                await app(scope, receive, send)
            else:
                await self._audited(scope, receive, send, app, call, signed)
        finally:
            current_principal.reset(token)

    async def _audited(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: App,
        call: Call,
        signed: SignedRequest,
    ) -> None:
        """Serve a mutating call and record its outcome (and its signature against a replay)."""
        status: list[int] = []
        error_type: list[str] = []

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-amzn-errortype":
                        error_type.append(value.decode("latin-1"))
            elif status and status[0] >= 400 and not error_type:
                # the XML protocols (IAM's query, S3) name the error in the body: <Code>
                found = _XML_CODE.search(message.get("body", b"")[:4096])
                if found:
                    error_type.append(found.group(1).decode("latin-1"))
            await send(message)

        try:
            await app(scope, receive, watch)
        finally:
            code = status[0] if status else 500
            outcome = "Success" if code < 400 else (error_type or [f"HTTP{code}"])[0]
            self._record(scope, call, outcome)
            if code < 400 and not signed.presigned and call.kind != "s3":
                self.signatures.remember(signed)

    def _classify(self, scope: Scope, router: Router) -> Call | None:
        method, path = scope["method"], scope["path"]
        if path == "/healthz" and method in ("GET", "HEAD"):
            return None
        headers = dict(scope["headers"])
        target = headers.get(b"x-amz-target")
        content_type = headers.get(b"content-type")
        if b"authorization" not in headers and b"X-Amz-Signature=" not in scope.get(
            "query_string", b""
        ):
            if path == "/metrics" and method == "GET":
                return None  # Prometheus does not sign; the figures are counts, not data
            studio = getattr(router, "studio", None)
            if studio is not None and (path == "/studio" or path.startswith("/studio/")):
                # Studio calls the API in process: served only once it signs its users in
                # itself (and says so), never as an unauthenticated way around the guard
                return None if getattr(studio, "authenticates_users", False) else Call("studio")
        if target is not None:
            prefix, _, operation = target.decode("latin-1").rpartition(".")
            call = Call("json", self._service_name(router, prefix), operation)
            call.headers = headers
            return call
        if (
            method == "POST"
            and path == "/"
            and content_type is not None
            and content_type.startswith(b"application/x-www-form-urlencoded")
        ):
            return Call("query")
        if router.runtime is not None and router.runtime.endpoint_of(method, path) is not None:
            return Call("runtime")
        for rest in router.rest_services:
            found = rest.match(method, path)
            if found is not None:
                rest_call = Call("rest", "sagemaker", found[0].name)
                rest_call.params = found[1]  # the URI's labels (FeatureGroupName, ...)
                return rest_call
        # S3 bodies stream through; DeleteObjects' is read for its keys, each one checked
        deleting = method == "POST" and b"delete" in scope.get("query_string", b"")
        return Call("s3", needs_body=deleting)

    def _service_name(self, router: Router, prefix: str) -> str:
        """IAM's service prefix of a JSON target prefix ("SageMaker" -> "sagemaker")."""
        name = self._services.get(prefix)
        if name is None:
            service = router.json_services.get(prefix)
            meta = service.model.metadata if service else {}
            name = str(meta.get("signingName") or meta.get("endpointPrefix") or prefix.lower())
            if service is not None:  # unknown prefixes are refused later, not remembered
                self._services[prefix] = name
        return name

    # -- authorization ---------------------------------------------------------------------
    def _authorize(self, scope: Scope, call: Call) -> None:
        principal = call.principal
        assert principal is not None
        contextual = principal.contextual
        context_values = self._context(scope, principal) if contextual else {}
        access = self._access(scope, call, context_values)
        call.access = access
        for action, resource in access:
            if action == "iam:PassRole" and not self._assumable(resource):
                raise refusal(
                    "ValidationException",
                    f"Could not assume role {resource}. Please ensure that the role exists and "
                    "allows principal 'sagemaker.amazonaws.com' to assume the role.",
                    "InvalidArgument",
                    400,
                )
        if principal.unrestricted or access == [("sts:GetCallerIdentity", "*")]:
            return  # as in AWS, anyone signed may ask who they are
        for action, resource in access:
            if contextual:
                decision = self._evaluate(scope, call, context_values, action, resource)
            else:
                cache_key = (principal.arn, action, resource)
                decision = self._decisions.get(cache_key, "")
                if not decision:
                    decision = self._evaluate(scope, call, context_values, action, resource)
                    if len(self._decisions) > 100_000:
                        self._decisions.clear()
                    self._decisions[cache_key] = decision
            if decision != ALLOW:
                how = (
                    "an explicit deny" if decision != "ImplicitDeny" else "no identity-based policy"
                )
                raise refusal(
                    "AccessDeniedException",
                    f"User: {principal.arn} is not authorized to perform: {action} on resource: "
                    f"{resource} because {how} allows it"
                    if decision == "ImplicitDeny"
                    else f"User: {principal.arn} is not authorized to perform: {action} on "
                    f"resource: {resource} with an explicit deny in an identity-based policy",
                    "AccessDenied",
                )

    def _evaluate(
        self,
        scope: Scope,
        call: Call,
        context_values: dict[str, list[str]],
        action: str,
        resource: str,
    ) -> str:
        """The decision of the caller's policies on one (action, resource)."""
        principal = call.principal
        assert principal is not None
        tags: dict[str, dict[str, str]] = {}
        requested: dict[str, list[str]] = {}

        def resolve(key: str, resource: str) -> list[str] | None:
            # what only some conditions ask for is computed when one does
            if key.startswith("aws:requesttag/") or key == "aws:tagkeys":
                if not requested:
                    found = access_map.request_tags(call.params) if call.kind == "json" else {}
                    requested.update({context_key(k): v for k, v in found.items()} or {"": []})
                return requested.get(key)
            if key == "sagemaker:instancetypes":
                return access_map.instance_types(call.params) or None
            if key == "aws:currenttime":
                now = datetime.now(UTC)
                return [now.strftime("%Y-%m-%dT%H:%M:%SZ")]
            if key == "aws:epochtime":
                return [str(int(time.time()))]
            prefix, _, tag = key.partition("/")
            if prefix not in ("aws:resourcetag", "sagemaker:resourcetag") or not tag:
                return None
            if resource not in tags:
                tags[resource] = dict(self.tags_of(resource)) if resource != "*" else {}
            value = tags[resource].get(tag)
            return None if value is None else [value]

        decision, _ = evaluate(
            principal.policies, action, resource, RequestContext(context_values, resolve)
        )
        return decision

    def _assumable(self, role_arn: str) -> bool:
        """SageMaker's check of a passed role: it exists and trusts sagemaker.amazonaws.com."""
        role = self.identities.role_by_arn(role_arn)
        return role is not None and self.identities.trusts(role, service=SAGEMAKER_SERVICE)

    def _context(self, scope: Scope, principal: Principal) -> dict[str, list[str]]:
        client = scope.get("client") or ("", 0)
        values = {
            "aws:SourceIp": [client[0]],
            "aws:SecureTransport": ["true" if scope.get("scheme") == "https" else "false"],
            "aws:PrincipalArn": [principal.arn],
            "aws:PrincipalAccount": [principal.account],
            "aws:PrincipalType": ["User" if principal.kind == "IAMUser" else principal.kind],
            "aws:userid": [principal.user_id],
            "aws:RequestedRegion": [self.settings.region],
        }
        if principal.kind == "IAMUser":
            values["aws:username"] = [principal.name]
        for key, value in principal.tags.items():
            values[f"aws:PrincipalTag/{key}"] = [value]
        return values

    def _access(
        self, scope: Scope, call: Call, context: dict[str, list[str]]
    ) -> list[tuple[str, str]]:
        if call.kind == "json":
            params = call.params = _json_params(call.body)
            if params or call.body in (b"", b"{}"):  # (else the protocol says what is wrong)
                scope[PARSED_PARAMS] = params  # the protocol need not parse it again
            if call.service == "sagemaker":
                access = access_map.sagemaker_access(call.operation, params, self.settings)
                if len(access) > 1:  # what follows the operation's own pair: passed roles
                    context["iam:PassedToService"] = ["sagemaker.amazonaws.com"]
                return access
            group = params.get("logGroupName") if call.service == "logs" else None
            if isinstance(group, str) and group:
                region, account = self.settings.region, self.settings.account_id
                return [(f"logs:{call.operation}",
                         f"arn:aws:logs:{region}:{account}:log-group:{group}")]  # fmt: skip
            return [(f"{call.service}:{call.operation}", "*")]
        if call.kind == "query":
            service = "sts" if call.params.get("Version") == "2011-06-15" else "iam"
            return [(f"{service}:{call.operation}", self._iam_resource(service, call.params))]
        if call.kind == "runtime":
            runtime_target = _runtime_target(scope)
            name, mode = runtime_target
            operation = {
                "invoke": "InvokeEndpoint",
                "stream": "InvokeEndpointWithResponseStream",
                "async": "InvokeEndpointAsync",
            }[mode]
            call.operation = operation
            return [(f"sagemaker:{operation}", self.settings.arn("endpoint", name.lower()))]
        if call.kind == "rest":
            group = call.params.get("FeatureGroupName")
            resource = self.settings.arn("feature-group", group.lower()) if group else "*"
            return [(f"sagemaker:{call.operation}", resource)]
        return self._s3_access(scope, call, context)

    def _iam_resource(self, service: str, params: dict[str, Any]) -> str:
        account = self.settings.account_id
        if service == "sts":
            return str(params.get("RoleArn", "*"))
        for member, kind in (
            ("UserName", "user"),
            ("RoleName", "role"),
            ("GroupName", "group"),
        ):
            if params.get(member):
                return f"arn:aws:iam::{account}:{kind}/{params[member]}"
        if params.get("PolicyArn"):
            return str(params["PolicyArn"])
        if params.get("PolicyName") and params.get("Action") == "CreatePolicy":
            return f"arn:aws:iam::{account}:policy/{params['PolicyName']}"
        return "*"

    def _s3_access(
        self, scope: Scope, call: Call, context: dict[str, list[str]]
    ) -> list[tuple[str, str]]:
        access = access_s3.s3_access(scope, call.body, self.suffixes, context)
        call.operation = access[0][0].partition(":")[2]
        return access

    def _checked_body(self, call: Call, signed: SignedRequest, receive: Receive) -> Receive:
        return access_s3.checked_body(self.signatures.verifier, call.secret, signed, receive)

    async def _credentials(self, scope: Scope, receive: Receive, send: Send) -> None:
        """botocore's container credentials endpoint: the grant in `Authorization` buys the
        role's next short session (jobs and tracking servers refresh through it)."""
        token = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        client = (scope.get("client") or ("", 0))[0]
        local = client in ("127.0.0.1", "::1") or client.startswith("127.")
        # botocore fetches container credentials from loopback only: nobody else has a reason to
        wanted = scope["method"] == "GET" and token and local
        issued = self.identities.redeem(token) if wanted else None
        if issued is None:
            body = {"code": "AccessDenied", "message": "No valid credentials grant."}
            await Response(orjson.dumps(body), 403, media_type="application/json")(
                scope, receive, send
            )
            return
        expiration = datetime.fromtimestamp(issued["Expiration"], UTC)
        body = {
            "AccessKeyId": issued["AccessKeyId"],
            "SecretAccessKey": issued["SecretAccessKey"],
            "Token": issued["SessionToken"],
            "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "AccountId": self.settings.account_id,
        }
        await Response(orjson.dumps(body), media_type="application/json")(scope, receive, send)

    # -- in-process callers ----------------------------------------------------------------
    def authorize_in_process(
        self,
        scope: Scope,
        principal: Principal,
        kind: str,
        service: str,
        operation: str,
        params: dict[str, Any],
    ) -> Callable[[str], None]:
        """Authorize a call that Studio makes in process for its signed-in user, through the
        same `_authorize` as a signed request of that `kind` ("json", "query", "runtime": then
        `scope` is the runtime request's). A refusal is audited and raised (`SignatureRefused`,
        AccessDeniedException's words); the function returned records a mutating call's
        outcome ("Success" or its error code) in the audit trail."""
        body = orjson.dumps(params, default=str)
        call = Call(kind, service, operation, body, dict(params), principal=principal)
        classify_reads(scope, call)
        try:
            self._authorize(scope, call)
        except SignatureRefused as error:
            self._record(scope, call, error.code, error.message)
            raise

        def outcome(result: str) -> None:
            if not call.read_only:
                self._record(scope, call, result)

        return outcome

    # -- answers ---------------------------------------------------------------------------
    def _refuse(self, call: Call, error: SignatureRefused) -> Response:
        request_id = new_request_id()
        if call.kind == "s3":
            s3_error = S3Error(error.s3_code, error.message)
            body = xml.error_xml(s3_error, request_id)
            return Response(
                body,
                status_code=error.status,
                media_type=xml.XML_CONTENT_TYPE,
                headers={"x-amz-request-id": request_id},
            )
        if call.kind == "query":
            code = _QUERY_CODES.get(error.code, error.code)
            root = ET.Element("ErrorResponse")
            inner = ET.SubElement(root, "Error")
            ET.SubElement(inner, "Type").text = "Sender"
            ET.SubElement(inner, "Code").text = code
            ET.SubElement(inner, "Message").text = error.message
            ET.SubElement(root, "RequestId").text = request_id
            return Response(
                ET.tostring(root, xml_declaration=True, encoding="utf-8"),
                status_code=error.status,
                media_type="text/xml",
                headers={"x-amzn-RequestId": request_id},
            )
        media = "application/x-amz-json-1.1" if call.kind == "json" else "application/json"
        return Response(
            orjson.dumps({"__type": error.code, "message": error.message}),
            status_code=error.status,
            media_type=media,
            headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error.code},
        )

    def _record(self, scope: Scope, call: Call, outcome: str, message: str = "") -> None:
        principal = call.principal
        client = scope.get("client") or ("", 0)
        service = call.service or {"query": "iam", "s3": "s3", "runtime": "sagemaker"}.get(
            call.kind, "sagemaker"
        )
        action, resource = (call.access or [(f"{service}:{call.operation}", "*")])[0]
        self.audit.record(
            AuditEvent(
                time=time.time(),
                principal=principal.arn if principal else "",
                user=principal.name if principal else call.access_key,
                access_key=call.access_key,
                action=action,
                resource=resource,
                source_ip=client[0],
                outcome=outcome,
                read_only=call.read_only,
                message=message,
            )
        )


def _too_large(limit: int) -> SignatureRefused:
    return refusal(
        "ValidationException",
        f"The request body exceeds the limit of {limit} bytes.",
        "EntityTooLarge",
        413,
    )


async def _read(receive: Receive, message: Any, limit: int = MAX_BODY) -> bytes:
    """The body of which `message` is the first message."""
    chunks, size = [], 0
    while True:
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


def _json_params(body: bytes | None) -> dict[str, Any]:
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _runtime_target(scope: Scope) -> tuple[str, str]:
    from salvia.api.runtime import RuntimeProtocol

    found = RuntimeProtocol.endpoint_of(scope["method"], scope["path"])
    assert found is not None
    return found
