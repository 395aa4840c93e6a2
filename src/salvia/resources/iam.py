"""IAM's and STS's operations that scripts use to manage access, over the `IdentityStore`.

Policy documents travel URL-encoded in IAM's answers (botocore decodes them back to dicts);
secrets are shown once, by CreateAccessKey.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from salvia.errors import AccessDenied, DeleteConflict, InvalidInput, NoSuchEntity
from salvia.iam import AuditEvent, AuditTrail, IdentityStore, current_principal
from salvia.iam.identities import ACCESS_KEY, GROUP, POLICY, ROLE, USER
from salvia.iam.logins import LoginProfiles
from salvia.iam.personas import AWS_POLICY_PREFIX, MANAGED
from salvia.resources.registry import operation
from salvia.store.metadata import Record

_USER_FIELDS = ("Path", "UserName", "UserId", "Arn", "CreateDate")
_GROUP_FIELDS = ("Path", "GroupName", "GroupId", "Arn", "CreateDate")
_ROLE_FIELDS = ("Path", "RoleName", "RoleId", "Arn", "CreateDate", "Description",
                "MaxSessionDuration")  # fmt: skip
_POLICY_FIELDS = ("PolicyName", "PolicyId", "Arn", "Path", "DefaultVersionId", "AttachmentCount",
                  "IsAttachable", "Description", "CreateDate", "UpdateDate")  # fmt: skip


def _pick(record: Record, fields: tuple[str, ...]) -> dict[str, Any]:
    shown = {name: record.body[name] for name in fields if record.body.get(name) not in (None, "")}
    if record.body.get("Tags"):
        shown["Tags"] = record.body["Tags"]
    return shown


def _role(record: Record) -> dict[str, Any]:
    shown = _pick(record, _ROLE_FIELDS)
    shown["AssumeRolePolicyDocument"] = quote(record.body["AssumeRolePolicyDocument"])
    return shown


def _page(items: list[Any], params: dict[str, Any], key: str) -> dict[str, Any]:
    start = int(params.get("Marker") or 0)
    limit = int(params.get("MaxItems") or 100)
    chosen = items[start : start + limit]
    result: dict[str, Any] = {key: chosen, "IsTruncated": start + limit < len(items)}
    if result["IsTruncated"]:
        result["Marker"] = str(start + limit)
    return result


class IamOperations:
    def __init__(self, identities: IdentityStore) -> None:
        self.ids = identities
        self.logins = LoginProfiles(identities)

    def _caller_name(self, params: dict[str, Any]) -> str:
        name = params.get("UserName")
        if name:
            return str(name)
        principal = current_principal.get()
        if principal is None or principal.kind != "IAMUser":
            raise InvalidInput("UserName is required when the caller is not an IAM user.")
        return principal.name

    # -- users -----------------------------------------------------------------------------
    @operation("CreateUser")
    def create_user(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.ids.create_user(
            params["UserName"], params.get("Path") or "/", params.get("Tags") or []
        )
        return {"User": _pick(record, _USER_FIELDS)}

    @operation("GetUser")
    def get_user(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"User": _pick(self.ids.get(USER, self._caller_name(params)), _USER_FIELDS)}

    @operation("ListUsers")
    def list_users(self, params: dict[str, Any]) -> dict[str, Any]:
        prefix = params.get("PathPrefix") or "/"
        users = [_pick(r, _USER_FIELDS) for r in self.ids.list(USER)
                 if r.body.get("Path", "/").startswith(prefix)]  # fmt: skip
        return _page(users, params, "Users")

    @operation("DeleteUser")
    def delete_user(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.ids.get(USER, params["UserName"]).body.get("LoginProfile"):
            raise DeleteConflict("Cannot delete entity, must delete login profile first.")
        self.ids.delete(USER, params["UserName"])
        return {}

    # -- console passwords (Studio's sign-in) ----------------------------------------------
    @operation("CreateLoginProfile")
    def create_login_profile(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("Password"):
            raise InvalidInput("Password is required: Salvia has no other way to sign in.")
        profile = self.logins.create(
            self._caller_name(params),
            params["Password"],
            bool(params.get("PasswordResetRequired")),
        )
        return {"LoginProfile": profile}

    @operation("GetLoginProfile")
    def get_login_profile(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"LoginProfile": self.logins.get(self._caller_name(params))}

    @operation("UpdateLoginProfile")
    def update_login_profile(self, params: dict[str, Any]) -> dict[str, Any]:
        reset = params.get("PasswordResetRequired")
        self.logins.update(
            params["UserName"], params.get("Password"), None if reset is None else bool(reset)
        )
        return {}

    @operation("DeleteLoginProfile")
    def delete_login_profile(self, params: dict[str, Any]) -> dict[str, Any]:
        self.logins.delete(self._caller_name(params))
        return {}

    # -- access keys -----------------------------------------------------------------------
    @operation("CreateAccessKey")
    def create_access_key(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"AccessKey": self.ids.create_access_key(self._caller_name(params))}

    @operation("ListAccessKeys")
    def list_access_keys(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.ids.get(USER, self._caller_name(params))
        keys = [
            {"UserName": user.name, "AccessKeyId": r.name, "Status": r.status,
             "CreateDate": r.creation_time}
            for r in self.ids.list(ACCESS_KEY, parent=user.name.lower())
        ]  # fmt: skip
        return _page(keys, params, "AccessKeyMetadata")

    @operation("DeleteAccessKey")
    def delete_access_key(self, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.delete_access_key(params["AccessKeyId"], self._caller_name(params))
        return {}

    @operation("UpdateAccessKey")
    def update_access_key(self, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.set_access_key_status(
            params["AccessKeyId"], self._caller_name(params), params["Status"]
        )
        return {}

    # -- groups ----------------------------------------------------------------------------
    @operation("CreateGroup")
    def create_group(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.ids.create_group(params["GroupName"], params.get("Path") or "/")
        return {"Group": _pick(record, _GROUP_FIELDS)}

    @operation("GetGroup")
    def get_group(self, params: dict[str, Any]) -> dict[str, Any]:
        group = self.ids.get(GROUP, params["GroupName"])
        members = [_pick(r, _USER_FIELDS) for r in self.ids.list(USER)
                   if group.name in r.body.get("Groups", [])]  # fmt: skip
        return {"Group": _pick(group, _GROUP_FIELDS), **_page(members, params, "Users")}

    @operation("ListGroups")
    def list_groups(self, params: dict[str, Any]) -> dict[str, Any]:
        groups = [_pick(r, _GROUP_FIELDS) for r in self.ids.list(GROUP)]
        return _page(groups, params, "Groups")

    @operation("ListGroupsForUser")
    def list_groups_for_user(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.ids.get(USER, params["UserName"])
        groups = [_pick(self.ids.get(GROUP, g), _GROUP_FIELDS) for g in user.body.get("Groups", [])]
        return _page(groups, params, "Groups")

    @operation("AddUserToGroup")
    def add_user_to_group(self, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.add_to_group(params["GroupName"], params["UserName"])
        return {}

    @operation("RemoveUserFromGroup")
    def remove_user_from_group(self, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.add_to_group(params["GroupName"], params["UserName"], member=False)
        return {}

    @operation("DeleteGroup")
    def delete_group(self, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.delete(GROUP, params["GroupName"])
        return {}

    # -- roles -----------------------------------------------------------------------------
    @operation("CreateRole")
    def create_role(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.ids.create_role(
            params["RoleName"],
            params["AssumeRolePolicyDocument"],
            params.get("Path") or "/",
            params.get("Description") or "",
            int(params.get("MaxSessionDuration") or 3600),
            params.get("Tags") or [],
        )
        return {"Role": _role(record)}

    @operation("GetRole")
    def get_role(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"Role": _role(self.ids.get(ROLE, params["RoleName"]))}

    @operation("ListRoles")
    def list_roles(self, params: dict[str, Any]) -> dict[str, Any]:
        return _page([_role(r) for r in self.ids.list(ROLE)], params, "Roles")

    @operation("DeleteRole")
    def delete_role(self, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.delete(ROLE, params["RoleName"])
        return {}

    # -- inline policies -------------------------------------------------------------------
    def _put(self, kind: str, member: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.put_inline_policy(
            kind, params[member], params["PolicyName"], params["PolicyDocument"]
        )
        return {}

    def _get(self, kind: str, member: str, params: dict[str, Any]) -> dict[str, Any]:
        record = self.ids.get(kind, params[member])
        document = record.body.get("InlinePolicies", {}).get(params["PolicyName"])
        if document is None:
            raise NoSuchEntity(f"The policy with name {params['PolicyName']} cannot be found.")
        return {member: record.name, "PolicyName": params["PolicyName"],
                "PolicyDocument": quote(document)}  # fmt: skip

    def _names(self, kind: str, member: str, params: dict[str, Any]) -> dict[str, Any]:
        names = sorted(self.ids.get(kind, params[member]).body.get("InlinePolicies", {}))
        return _page(names, params, "PolicyNames")

    def _delete(self, kind: str, member: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids.delete_inline_policy(kind, params[member], params["PolicyName"])
        return {}

    @operation("PutUserPolicy")
    def put_user_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._put(USER, "UserName", params)

    @operation("GetUserPolicy")
    def get_user_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._get(USER, "UserName", params)

    @operation("ListUserPolicies")
    def list_user_policies(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._names(USER, "UserName", params)

    @operation("DeleteUserPolicy")
    def delete_user_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._delete(USER, "UserName", params)

    @operation("PutRolePolicy")
    def put_role_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._put(ROLE, "RoleName", params)

    @operation("GetRolePolicy")
    def get_role_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._get(ROLE, "RoleName", params)

    @operation("ListRolePolicies")
    def list_role_policies(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._names(ROLE, "RoleName", params)

    @operation("DeleteRolePolicy")
    def delete_role_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._delete(ROLE, "RoleName", params)

    @operation("PutGroupPolicy")
    def put_group_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._put(GROUP, "GroupName", params)

    @operation("GetGroupPolicy")
    def get_group_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._get(GROUP, "GroupName", params)

    @operation("DeleteGroupPolicy")
    def delete_group_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._delete(GROUP, "GroupName", params)

    # -- managed policies ------------------------------------------------------------------
    @operation("CreatePolicy")
    def create_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.ids.create_policy(
            params["PolicyName"],
            params["PolicyDocument"],
            params.get("Path") or "/",
            params.get("Description") or "",
        )
        return {"Policy": _pick(record, _POLICY_FIELDS)}

    @operation("GetPolicy")
    def get_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        arn = params["PolicyArn"]
        if arn.startswith(AWS_POLICY_PREFIX):
            self.ids.policy_document(arn)
            name = arn.removeprefix(AWS_POLICY_PREFIX)
            return {"Policy": {"PolicyName": name, "Arn": arn, "Path": "/",
                               "DefaultVersionId": "v1", "IsAttachable": True}}  # fmt: skip
        record = self.ids.store.get_by_arn(arn)
        if record is None or record.kind != POLICY:
            raise NoSuchEntity(f"Policy {arn} was not found.")
        return {"Policy": _pick(record, _POLICY_FIELDS)}

    @operation("GetPolicyVersion")
    def get_policy_version(self, params: dict[str, Any]) -> dict[str, Any]:
        document = self.ids.policy_document(params["PolicyArn"])
        return {"PolicyVersion": {"Document": quote(document), "VersionId": "v1",
                                  "IsDefaultVersion": True}}  # fmt: skip

    @operation("ListPolicies")
    def list_policies(self, params: dict[str, Any]) -> dict[str, Any]:
        scope = params.get("Scope") or "All"
        listed: list[dict[str, Any]] = []
        if scope in ("All", "AWS"):
            listed += [
                {"PolicyName": n, "Arn": AWS_POLICY_PREFIX + n, "Path": "/",
                 "DefaultVersionId": "v1", "IsAttachable": True}
                for n in MANAGED
            ]  # fmt: skip
        if scope in ("All", "Local"):
            listed += [_pick(r, _POLICY_FIELDS) for r in self.ids.list(POLICY)]
        return _page(listed, params, "Policies")

    @operation("DeletePolicy")
    def delete_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        record = self.ids.store.get_by_arn(params["PolicyArn"])
        if record is None or record.kind != POLICY:
            raise NoSuchEntity(f"Policy {params['PolicyArn']} was not found.")
        self.ids.delete(POLICY, record.name)
        return {}

    def _attach(self, kind: str, member: str, params: dict[str, Any], on: bool) -> dict[str, Any]:
        self.ids.attach(kind, params[member], params["PolicyArn"], attached=on)
        return {}

    def _attached(self, kind: str, member: str, params: dict[str, Any]) -> dict[str, Any]:
        arns = self.ids.get(kind, params[member]).body.get("AttachedPolicies", [])
        shown = [{"PolicyName": arn.rsplit("/", 1)[-1], "PolicyArn": arn} for arn in arns]
        return _page(shown, params, "AttachedPolicies")

    @operation("AttachUserPolicy")
    def attach_user_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attach(USER, "UserName", params, True)

    @operation("DetachUserPolicy")
    def detach_user_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attach(USER, "UserName", params, False)

    @operation("ListAttachedUserPolicies")
    def list_attached_user_policies(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attached(USER, "UserName", params)

    @operation("AttachRolePolicy")
    def attach_role_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attach(ROLE, "RoleName", params, True)

    @operation("DetachRolePolicy")
    def detach_role_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attach(ROLE, "RoleName", params, False)

    @operation("ListAttachedRolePolicies")
    def list_attached_role_policies(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attached(ROLE, "RoleName", params)

    @operation("AttachGroupPolicy")
    def attach_group_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attach(GROUP, "GroupName", params, True)

    @operation("DetachGroupPolicy")
    def detach_group_policy(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attach(GROUP, "GroupName", params, False)

    @operation("ListAttachedGroupPolicies")
    def list_attached_group_policies(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._attached(GROUP, "GroupName", params)


class StsOperations:
    def __init__(
        self, identities: IdentityStore, open_caller: Callable[[], dict[str, str]]
    ) -> None:
        self.ids = identities
        self.open_caller = open_caller  # who the caller is when nothing is checked (open mode)

    @operation("GetCallerIdentity")
    def get_caller_identity(self, params: dict[str, Any]) -> dict[str, Any]:
        principal = current_principal.get()
        if principal is None:
            return self.open_caller()
        return {"UserId": principal.user_id, "Account": principal.account, "Arn": principal.arn}

    @operation("AssumeRole")
    def assume_role(self, params: dict[str, Any]) -> dict[str, Any]:
        role = self.ids.role_by_arn(params["RoleArn"])
        principal = current_principal.get()
        if role is None or (
            principal is not None and not self.ids.trusts(role, caller=principal.arn)
        ):
            raise AccessDenied(
                f"User: {principal.arn if principal else 'anonymous'} is not authorized to "
                f"perform: sts:AssumeRole on resource: {params['RoleArn']}"
            )
        issued = self.ids.issue_session(
            params["RoleArn"], params["RoleSessionName"], int(params.get("DurationSeconds") or 3600)
        )
        user = issued.pop("AssumedRoleUser")
        return {"Credentials": issued, "AssumedRoleUser": user}


_LOOKUP_KEYS = {
    "EventName": lambda e: e.action.partition(":")[2],
    "Username": lambda e: e.user,
    "ResourceName": lambda e: e.resource,
    "EventSource": lambda e: e.source,
    "ReadOnly": lambda e: "true" if e.read_only else "false",
    "AccessKeyId": lambda e: e.access_key,
    "EventId": lambda e: e.event_id,
}


class AuditQueries:
    """CloudTrail's LookupEvents over Salvia's audit trail (`salvia audit` is its client)."""

    def __init__(self, audit: AuditTrail) -> None:
        self.audit = audit

    @operation("LookupEvents")
    def lookup_events(self, params: dict[str, Any]) -> dict[str, Any]:
        wanted = [(a["AttributeKey"], a["AttributeValue"])
                  for a in params.get("LookupAttributes") or []]  # fmt: skip
        for key, _ in wanted:
            if key not in _LOOKUP_KEYS:
                raise InvalidInput(f"LookupAttribute key {key} is not supported.")
        user = next((value for key, value in wanted if key == "Username"), None)
        start, end = params.get("StartTime"), params.get("EndTime")
        skip = int(params.get("NextToken") or 0)
        limit = int(params.get("MaxResults") or 50)
        events: list[dict[str, Any]] = []
        seen = 0
        for event in self.audit.events(
            start=_epoch(start) if start is not None else None,
            end=_epoch(end) if end is not None else None,
            user=user,
        ):
            if any(_LOOKUP_KEYS[key](event) != value for key, value in wanted):
                continue
            seen += 1
            if seen <= skip:
                continue
            if len(events) == limit:
                return {"Events": events, "NextToken": str(skip + limit)}
            events.append(_cloudtrail(event))
        return {"Events": events}


def _epoch(value: Any) -> float:
    from salvia.clock import parse_timestamp

    parsed = parse_timestamp(value)
    return parsed.timestamp() if parsed is not None else 0.0


def _cloudtrail(event: AuditEvent) -> dict[str, Any]:
    service, _, name = event.action.partition(":")
    detail = {
        "eventVersion": "1.08",
        "eventID": event.event_id,
        "eventTime": event.time,
        "eventSource": event.source,
        "eventName": name,
        "userIdentity": {"arn": event.principal, "userName": event.user,
                         "accessKeyId": event.access_key},
        "sourceIPAddress": event.source_ip,
        "readOnly": event.read_only,
        "resources": [{"ARN": event.resource}],
        "outcome": event.outcome,
    }  # fmt: skip
    if event.outcome != "Success":
        detail["errorCode"] = event.outcome
        detail["errorMessage"] = event.message
    return {
        "EventId": event.event_id,
        "EventName": name,
        "ReadOnly": "true" if event.read_only else "false",
        "AccessKeyId": event.access_key,
        "EventTime": event.time,
        "EventSource": event.source,
        "Username": event.user,
        "Resources": [{"ResourceType": service, "ResourceName": event.resource}],
        "CloudTrailEvent": json.dumps(detail),
    }
