"""Users, groups, roles, managed policies and access keys, kept in the metadata store.

Each entity is a record of its own kind (`iam-user`, `iam-group`, `iam-role`, `iam-policy`,
`iam-access-key`) whose body holds IAM's fields plus its inline policies and attachments; a
secret access key is stored only sealed (`SecretBox`). The store is the truth; what a request
needs (the secret of a key and the policies of its principal) is cached in memory and dropped
on every change this server makes, so a request costs dictionary lookups, not queries.

Temporary credentials (execution roles, `AssumeRole`) need no storage: the session token is
sealed {key id, role, expiry}, and the secret is derived from the key id.
"""

from __future__ import annotations

import contextvars
import functools
import json
import secrets
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from salvia.clock import Clock
from salvia.errors import (
    AlreadyExists,
    DeleteConflict,
    EntityAlreadyExists,
    InvalidInput,
    MalformedPolicyDocument,
    NoSuchEntity,
)
from salvia.iam.personas import AWS_POLICY_PREFIX, MANAGED
from salvia.iam.policy import MalformedPolicy, Policy
from salvia.iam.secrets import SecretBox
from salvia.store.metadata import ListQuery, MetadataStore, Record

USER, GROUP, ROLE, POLICY, ACCESS_KEY = (
    "iam-user",
    "iam-group",
    "iam-role",
    "iam-policy",
    "iam-access-key",
)
ADMIN_USER = "admin"
_ID_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"
DEFAULT_SESSION_SECONDS = 3600


def new_id(prefix: str, length: int = 17) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class Principal:
    """Who signed a request, and the identity-based policies that decide what it may do."""

    arn: str
    name: str
    kind: str  # "IAMUser" | "AssumedRole" | "Root" (open mode)
    user_id: str
    account: str
    access_key: str
    policies: tuple[Policy, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    unrestricted: bool = False  # open mode: no policy is evaluated

    @functools.cached_property
    def contextual(self) -> bool:
        """Whether a decision may depend on more than (action, resource) (see `Policy`)."""
        return any(policy.contextual for policy in self.policies)


def _policy_or_error(document: str) -> Policy:
    try:
        return Policy.parse(document)
    except MalformedPolicy as error:
        raise MalformedPolicyDocument(str(error)) from None


class IdentityStore:
    """IAM's entities over a `MetadataStore`. Thread-safe: writes go to the store (atomic per
    call) and clear the in-memory caches under a lock."""

    def __init__(
        self, store: MetadataStore, box: SecretBox, account: str, clock: Clock | None = None
    ) -> None:
        self.store = store
        self.box = box
        self.account = account
        self.clock = clock or Clock()
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, Principal]] = {}
        self._sessions: dict[str, tuple[str, Principal, float]] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- the request path ------------------------------------------------------------------
    def credentials(self, access_key: str, token: str | None) -> tuple[str, Principal] | None:
        """(secret, principal) of an access key; None when Salvia never issued it (or it is
        inactive, or its session is over)."""
        if access_key.startswith("ASIA"):
            return self._session(access_key, token)
        found = self._keys.get(access_key)
        if found is not None:
            return found
        record = self.store.get(ACCESS_KEY, access_key)
        if record is None or record.status != "Active":
            return None
        secret = self.box.open(record.body["Secret"])
        user = self.store.get(USER, record.body["UserName"])
        if secret is None or user is None:
            return None
        principal = Principal(
            arn=user.arn,
            name=user.name,
            kind="IAMUser",
            user_id=user.body["UserId"],
            account=self.account,
            access_key=access_key,
            policies=self._user_policies(user),
            tags={t["Key"]: t["Value"] for t in user.body.get("Tags", [])},
        )
        with self._lock:
            self._keys[access_key] = (secret, principal)
        return secret, principal

    def _session(self, access_key: str, token: str | None) -> tuple[str, Principal] | None:
        if not token:
            return None
        cached = self._sessions.get(token)
        if cached is None:
            opened = self.box.open(token)
            if opened is None:
                return None
            claims = json.loads(opened)
            if "key" not in claims:  # a grant (see `grant`) is not a session
                return None
            role = self.store.get(ROLE, claims["role"])
            if role is None:
                return None
            name = f"{claims['role']}/{claims['session']}"
            principal = Principal(
                arn=f"arn:aws:sts::{self.account}:assumed-role/{name}",
                name=name,
                kind="AssumedRole",
                user_id=f"{role.body['RoleId']}:{claims['session']}",
                account=self.account,
                access_key=claims["key"],
                policies=self._role_policies(role),
                tags={t["Key"]: t["Value"] for t in role.body.get("Tags", [])},
            )
            cached = (self.box.derive("session", claims["key"]), principal, claims["expires"])
            with self._lock:
                if len(self._sessions) > 10_000:
                    self._sessions.clear()
                self._sessions[token] = cached
        secret, principal, expires = cached
        if principal.access_key != access_key or time.time() > expires:
            return None
        return secret, principal

    def issue_session(
        self,
        role_arn: str,
        session_name: str,
        seconds: int = DEFAULT_SESSION_SECONDS,
        within_role_limit: bool = True,
    ) -> dict[str, Any]:
        """Short-lived credentials for a role, as STS's `Credentials` shape. Jobs' own
        credentials last their whole run (`within_role_limit=False`)."""
        role = self.role_by_arn(role_arn)
        if role is None:
            raise NoSuchEntity(f"The role {role_arn} cannot be found.")
        limit = int(role.body.get("MaxSessionDuration", 3600))
        if within_role_limit and not 900 <= seconds <= max(limit, 900):
            raise InvalidInput(f"DurationSeconds must be between 900 and {limit}.")
        key = new_id("ASIA", 16)
        expires = time.time() + seconds
        claims = {"key": key, "role": role.name, "session": session_name, "expires": expires}
        return {
            "AccessKeyId": key,
            "SecretAccessKey": self.box.derive("session", key),
            "SessionToken": self.box.seal(json.dumps(claims)),
            "Expiration": expires,
            "AssumedRoleUser": {
                "AssumedRoleId": f"{role.body['RoleId']}:{session_name}",
                "Arn": f"arn:aws:sts::{self.account}:assumed-role/{role.name}/{session_name}",
            },
        }

    def trusts(self, role: Record, *, caller: str = "", service: str = "") -> bool:
        """Whether the role's trust policy lets `caller` (an ARN) or `service` assume it: an
        Allow statement for sts:AssumeRole naming the caller, its account (root or id), "*",
        or the service; an explicit Deny for them wins."""
        try:
            document = json.loads(role.body.get("AssumeRolePolicyDocument") or "{}")
        except json.JSONDecodeError:
            return False
        statements = document.get("Statement", []) if isinstance(document, dict) else []
        if isinstance(statements, dict):
            statements = [statements]
        account = self.account
        names = {caller, "*", account, f"arn:aws:iam::{account}:root"} - {""}
        allowed = False
        for statement in statements:
            if not isinstance(statement, dict):
                continue
            actions = statement.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if not any(a in ("sts:AssumeRole", "sts:*", "*") for a in actions):
                continue
            principal = statement.get("Principal", {})
            if principal == "*":
                hit = True
            else:
                listed = principal.get("AWS", []) if isinstance(principal, dict) else []
                services = principal.get("Service", []) if isinstance(principal, dict) else []
                listed = [listed] if isinstance(listed, str) else listed
                services = [services] if isinstance(services, str) else services
                hit = bool(names & set(listed)) if caller else False
                hit = hit or (bool(service) and service in services)
            if hit and statement.get("Effect") == "Deny":
                return False
            allowed = allowed or (hit and statement.get("Effect") == "Allow")
        return allowed

    def grant(self, role_arn: str, session_name: str, seconds: int) -> str:
        """A sealed right to fetch the role's credentials for `seconds`: what a job presents to
        the credentials endpoint (botocore's container credentials provider), which answers
        with a fresh short session each time the previous one nears its end."""
        claims = {"grant": role_arn, "session": session_name, "until": time.time() + seconds}
        return self.box.seal(json.dumps(claims))

    def redeem(self, token: str, seconds: int = DEFAULT_SESSION_SECONDS) -> dict[str, Any] | None:
        """Credentials for a grant still in force (a session of at most `seconds`), or None."""
        opened = self.box.open(token)
        claims = json.loads(opened) if opened else {}
        if "grant" not in claims:
            return None
        left = int(claims["until"] - time.time())
        if left <= 0:
            return None
        try:
            return self.issue_session(
                claims["grant"], claims["session"], min(seconds, left), within_role_limit=False
            )
        except NoSuchEntity:
            return None

    def role_by_arn(self, arn: str) -> Record | None:
        if ":role/" not in arn:
            return None
        return self.store.get(ROLE, arn.rsplit("/", 1)[-1])

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        with self._lock:
            self._keys.clear()
            self._sessions.clear()
        for listener in self._listeners:
            listener()

    # -- policies of a principal -----------------------------------------------------------
    def _documents(self, body: dict[str, Any]) -> list[Policy]:
        found = [_policy_or_error(doc) for doc in body.get("InlinePolicies", {}).values()]
        for arn in body.get("AttachedPolicies", []):
            found.append(_policy_or_error(self.policy_document(arn)))
        return found

    def _user_policies(self, user: Record) -> tuple[Policy, ...]:
        policies = self._documents(user.body)
        for group_name in user.body.get("Groups", []):
            group = self.store.get(GROUP, group_name)
            if group is not None:
                policies.extend(self._documents(group.body))
        return tuple(policies)

    def _role_policies(self, role: Record) -> tuple[Policy, ...]:
        return tuple(self._documents(role.body))

    def policy_document(self, arn: str) -> str:
        if arn.startswith(AWS_POLICY_PREFIX):
            name = arn.removeprefix(AWS_POLICY_PREFIX)
            if name in MANAGED:
                return json.dumps(MANAGED[name])
            raise NoSuchEntity(f"Policy {arn} does not exist or is not attachable.")
        record = self.store.get_by_arn(arn)
        if record is None or record.kind != POLICY:
            raise NoSuchEntity(f"Policy {arn} does not exist or is not attachable.")
        return str(record.body["Document"])

    # -- entities --------------------------------------------------------------------------
    def arn(self, kind: str, name: str, path: str = "/") -> str:
        return f"arn:aws:iam::{self.account}:{kind}{path}{name}"

    def _create(self, kind: str, name: str, arn: str, body: dict[str, Any]) -> Record:
        now = self.clock.now()
        record = Record(kind, name, arn, now, now, body)
        try:
            created = self.store.create(record)
        except AlreadyExists:
            label = kind.removeprefix("iam-").replace("-", " ")
            raise EntityAlreadyExists(f"{label.title()} with name {name} already exists.") from None
        self._changed()
        return created

    def get(self, kind: str, name: str) -> Record:
        record = self.store.get(kind, name)
        if record is None:
            label = kind.removeprefix("iam-").replace("-", " ")
            raise NoSuchEntity(f"The {label} with name {name} cannot be found.")
        return record

    def list(self, kind: str, parent: str | None = None) -> list[Record]:
        records: list[Record] = []
        query = ListQuery(kind=kind, parent=parent, sort_by="name", descending=False, limit=100)
        while True:
            page = self.store.list_records(query)
            records.extend(page.records)
            if page.next_cursor is None:
                return records
            query.after = page.next_cursor

    def update(self, kind: str, name: str, mutate: Callable[[Record], None]) -> Record:
        updated = self.store.update(kind, name, mutate, self.clock.now())
        if updated is None:
            self.get(kind, name)  # raises NoSuchEntity
            raise AssertionError("unreachable")
        self._changed()
        return updated

    def delete(self, kind: str, name: str) -> Record:
        record = self.get(kind, name)
        if kind == USER:
            if self.list(ACCESS_KEY, parent=name.lower()):
                raise DeleteConflict("Cannot delete entity, must delete access keys first.")
            if record.body.get("AttachedPolicies") or record.body.get("InlinePolicies"):
                raise DeleteConflict("Cannot delete entity, must detach all policies first.")
        self.store.delete(kind, name)
        self._changed()
        return record

    def create_user(
        self, name: str, path: str = "/", tags: Sequence[dict[str, str]] = ()
    ) -> Record:
        body = {
            "UserName": name,
            "UserId": new_id("AIDA"),
            "Path": path,
            "Arn": self.arn("user", name, path),
            "CreateDate": self.clock.now(),
            "Tags": list(tags),
            "InlinePolicies": {},
            "AttachedPolicies": [],
            "Groups": [],
        }
        return self._create(USER, name, self.arn("user", name, path), body)

    def create_group(self, name: str, path: str = "/") -> Record:
        body = {
            "GroupName": name,
            "GroupId": new_id("AGPA"),
            "Path": path,
            "Arn": self.arn("group", name, path),
            "CreateDate": self.clock.now(),
            "InlinePolicies": {},
            "AttachedPolicies": [],
        }
        return self._create(GROUP, name, self.arn("group", name, path), body)

    def create_role(
        self,
        name: str,
        trust_policy: str,
        path: str = "/",
        description: str = "",
        max_session: int = 3600,
        tags: Sequence[dict[str, str]] = (),
    ) -> Record:
        try:
            json.loads(trust_policy)
        except json.JSONDecodeError:
            raise MalformedPolicyDocument("The trust policy is not valid JSON.") from None
        body = {
            "RoleName": name,
            "RoleId": new_id("AROA"),
            "Path": path,
            "Arn": self.arn("role", name, path),
            "CreateDate": self.clock.now(),
            "AssumeRolePolicyDocument": trust_policy,
            "Description": description,
            "MaxSessionDuration": max_session,
            "Tags": list(tags),
            "InlinePolicies": {},
            "AttachedPolicies": [],
        }
        return self._create(ROLE, name, self.arn("role", name, path), body)

    def create_policy(
        self, name: str, document: str, path: str = "/", description: str = ""
    ) -> Record:
        _policy_or_error(document)
        now = self.clock.now()
        body = {
            "PolicyName": name,
            "PolicyId": new_id("ANPA"),
            "Arn": self.arn("policy", name, path),
            "Path": path,
            "DefaultVersionId": "v1",
            "AttachmentCount": 0,
            "IsAttachable": True,
            "Description": description,
            "CreateDate": now,
            "UpdateDate": now,
            "Document": document,
        }
        return self._create(POLICY, name, self.arn("policy", name, path), body)

    def put_inline_policy(self, kind: str, name: str, policy_name: str, document: str) -> None:
        _policy_or_error(document)

        def put(record: Record) -> None:
            record.body.setdefault("InlinePolicies", {})[policy_name] = document

        self.update(kind, name, put)

    def delete_inline_policy(self, kind: str, name: str, policy_name: str) -> None:
        if policy_name not in self.get(kind, name).body.get("InlinePolicies", {}):
            raise NoSuchEntity(f"The policy with name {policy_name} cannot be found.")

        def drop(record: Record) -> None:
            record.body.get("InlinePolicies", {}).pop(policy_name, None)

        self.update(kind, name, drop)

    def attach(self, kind: str, name: str, policy_arn: str, attached: bool = True) -> None:
        self.policy_document(policy_arn)  # raises NoSuchEntity

        def change(record: Record) -> None:
            arns = record.body.setdefault("AttachedPolicies", [])
            if attached and policy_arn not in arns:
                arns.append(policy_arn)
            elif not attached and policy_arn in arns:
                arns.remove(policy_arn)

        self.update(kind, name, change)

    def add_to_group(self, group: str, user: str, member: bool = True) -> None:
        group_record = self.get(GROUP, group)

        def change(record: Record) -> None:
            groups = record.body.setdefault("Groups", [])
            if member and group_record.name not in groups:
                groups.append(group_record.name)
            elif not member and group_record.name in groups:
                groups.remove(group_record.name)

        self.update(USER, user, change)

    def create_access_key(self, user: str) -> dict[str, Any]:
        owner = self.get(USER, user)
        if len(self.list(ACCESS_KEY, parent=owner.name.lower())) >= 2:
            from salvia.errors import ResourceLimitExceeded

            raise ResourceLimitExceeded("Cannot exceed quota for AccessKeysPerUser: 2")
        key = new_id("AKIA", 16)
        secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
        now = self.clock.now()
        record = Record(
            ACCESS_KEY,
            key,
            f"arn:aws:iam::{self.account}:access-key/{key}",
            now,
            now,
            {"UserName": owner.name, "AccessKeyId": key, "Secret": self.box.seal(secret)},
            status="Active",
            parent=owner.name.lower(),
        )
        self.store.create(record)
        self._changed()
        return {
            "UserName": owner.name,
            "AccessKeyId": key,
            "Status": "Active",
            "SecretAccessKey": secret,
            "CreateDate": now,
        }

    def delete_access_key(self, key: str, user: str | None) -> None:
        record = self.store.get(ACCESS_KEY, key)
        if record is None or (user is not None and record.parent != user.lower()):
            raise NoSuchEntity(f"The Access Key with id {key} cannot be found.")
        self.store.delete(ACCESS_KEY, key)
        self._changed()

    def set_access_key_status(self, key: str, user: str | None, status: str) -> None:
        if status not in ("Active", "Inactive"):
            raise InvalidInput(f"Status must be Active or Inactive, got {status!r}.")
        record = self.store.get(ACCESS_KEY, key)
        if record is None or (user is not None and record.parent != user.lower()):
            raise NoSuchEntity(f"The Access Key with id {key} cannot be found.")

        def change(found: Record) -> None:
            found.status = status

        self.store.update(ACCESS_KEY, key, change, self.clock.now())
        self._changed()

    def bootstrap_admin(self) -> dict[str, Any] | None:
        """The first administrator's key, on the first start only: None once any user exists
        (deleting the administrator later does not make a restart print a new key)."""
        if self.store.list_records(ListQuery(kind=USER, limit=1)).records:
            return None
        self.create_user(ADMIN_USER)
        self.attach(USER, ADMIN_USER, AWS_POLICY_PREFIX + "AdministratorAccess")
        return self.create_access_key(ADMIN_USER)

    def user_principal(self, name: str) -> Principal | None:
        """A user signed in without a key (Studio's sign-in, by password), with the policies
        of now; None once the user is gone."""
        user = self.store.get(USER, name)
        if user is None:
            return None
        return Principal(
            arn=user.arn,
            name=user.name,
            kind="IAMUser",
            user_id=user.body["UserId"],
            account=self.account,
            access_key="",
            policies=self._user_policies(user),
            tags={t["Key"]: t["Value"] for t in user.body.get("Tags", [])},
        )


# The principal of the request being served, set by the API's access guard: operations that
# answer about the caller (GetCallerIdentity, GetUser without a name) read it.
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)
