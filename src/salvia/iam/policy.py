"""IAM's policy language: documents parsed once into statements, evaluated per request.

Evaluation follows IAM's logic for identity-based policies: a request is allowed when some
statement allows it and none denies it (an explicit deny always wins; nothing allowing it is an
implicit deny). A statement applies when its `Action`/`NotAction`, `Resource`/`NotResource` and
every `Condition` match. Conditions: each operator's keys are ANDed, each key's values ORed, and
negated operators (`StringNotEquals`, ...) match when no value matches. `...IfExists` operators
match an absent key; `ForAnyValue:`/`ForAllValues:` compare multi-valued keys (`aws:TagKeys`).
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ALLOW, EXPLICIT_DENY, IMPLICIT_DENY = "Allow", "ExplicitDeny", "ImplicitDeny"
_VARIABLE = re.compile(r"\$\{([^}]+)\}")


class MalformedPolicy(ValueError):
    """A policy document IAM would refuse (`MalformedPolicyDocument`)."""


def _as_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        return value
    raise MalformedPolicy(f"{what} must be a string or a non-empty list of strings")


@functools.lru_cache(maxsize=4096)
def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile(fnmatch.translate(pattern), flags)


def _matches(pattern: str, value: str, ignore_case: bool = False) -> bool:
    if pattern == "*":
        return True
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == value.lower() if ignore_case else pattern == value
    if "[" in pattern:  # fnmatch's brackets mean nothing in IAM
        pattern = pattern.replace("[", "[[]")
    return _wildcard(pattern, ignore_case).fullmatch(value) is not None


def context_key(name: str) -> str:
    """Condition keys are case-insensitive; a tag key after the '/' keeps its case."""
    prefix, slash, rest = name.partition("/")
    return prefix.lower() + slash + rest


class RequestContext:
    """The request context keys of one request: values given up front, plus those a resolver
    computes on demand (a resource's tags need a lookup only when a condition names them)."""

    def __init__(
        self,
        values: Mapping[str, Sequence[str]] | None = None,
        resolver: Callable[[str, str], Sequence[str] | None] | None = None,
    ) -> None:
        self._given = values or {}
        self._values: dict[str, list[str]] | None = None  # normalized on first use
        self.resolver = resolver

    @property
    def values(self) -> dict[str, list[str]]:
        if self._values is None:
            self._values = {context_key(k): list(v) for k, v in self._given.items()}
        return self._values

    def get(self, key: str, resource: str) -> list[str] | None:
        found = self.values.get(key)
        if found is not None:
            return found
        if self.resolver is not None:
            resolved = self.resolver(key, resource)
            return None if resolved is None else list(resolved)
        return None

    def substitute(self, text: str, resource: str) -> str:
        if "${" not in text:
            return text

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in ("*", "?", "$"):
                return name
            found = self.get(context_key(name), resource)
            return found[0] if found else "\0"  # an unknown variable matches nothing

        return _VARIABLE.sub(value, text)


# -- condition operators -------------------------------------------------------------------
def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _date(text: str) -> float | None:
    number = _number(text)
    if number is not None:
        return number
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _compare(convert: Callable[[str], float | None], test: Callable[[float, float], bool]) -> Any:
    def match(value: str, wanted: str, _resource: str, _ctx: RequestContext) -> bool:
        left, right = convert(value), convert(wanted)
        return left is not None and right is not None and test(left, right)

    return match


def _string_equals(value: str, wanted: str, resource: str, ctx: RequestContext) -> bool:
    return value == ctx.substitute(wanted, resource)


def _string_equals_ic(value: str, wanted: str, resource: str, ctx: RequestContext) -> bool:
    return value.lower() == ctx.substitute(wanted, resource).lower()


def _string_like(value: str, wanted: str, resource: str, ctx: RequestContext) -> bool:
    return _matches(ctx.substitute(wanted, resource), value)


def _arn_like(value: str, wanted: str, resource: str, ctx: RequestContext) -> bool:
    pattern = ctx.substitute(wanted, resource).split(":", 5)
    parts = value.split(":", 5)
    if len(pattern) != 6 or len(parts) != 6:
        return False
    return all(_matches(p, v) for p, v in zip(pattern, parts, strict=True))


def _bool(value: str, wanted: str, _resource: str, _ctx: RequestContext) -> bool:
    return value.lower() == str(wanted).lower()


def _ip(value: str, wanted: str, _resource: str, _ctx: RequestContext) -> bool:
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(wanted, strict=False)
    except ValueError:
        return False


_OPERATORS: dict[str, tuple[Any, bool]] = {  # name -> (match one value, negated)
    "StringEquals": (_string_equals, False),
    "StringNotEquals": (_string_equals, True),
    "StringEqualsIgnoreCase": (_string_equals_ic, False),
    "StringNotEqualsIgnoreCase": (_string_equals_ic, True),
    "StringLike": (_string_like, False),
    "StringNotLike": (_string_like, True),
    "NumericEquals": (_compare(_number, lambda a, b: a == b), False),
    "NumericNotEquals": (_compare(_number, lambda a, b: a == b), True),
    "NumericLessThan": (_compare(_number, lambda a, b: a < b), False),
    "NumericLessThanEquals": (_compare(_number, lambda a, b: a <= b), False),
    "NumericGreaterThan": (_compare(_number, lambda a, b: a > b), False),
    "NumericGreaterThanEquals": (_compare(_number, lambda a, b: a >= b), False),
    "DateEquals": (_compare(_date, lambda a, b: a == b), False),
    "DateNotEquals": (_compare(_date, lambda a, b: a == b), True),
    "DateLessThan": (_compare(_date, lambda a, b: a < b), False),
    "DateLessThanEquals": (_compare(_date, lambda a, b: a <= b), False),
    "DateGreaterThan": (_compare(_date, lambda a, b: a > b), False),
    "DateGreaterThanEquals": (_compare(_date, lambda a, b: a >= b), False),
    "Bool": (_bool, False),
    "IpAddress": (_ip, False),
    "NotIpAddress": (_ip, True),
    "ArnEquals": (_arn_like, False),
    "ArnLike": (_arn_like, False),
    "ArnNotEquals": (_arn_like, True),
    "ArnNotLike": (_arn_like, True),
}


@dataclass(frozen=True, slots=True)
class Condition:
    operator: str
    key: str
    values: tuple[str, ...]
    if_exists: bool = False
    set_operator: str = ""  # "", "ForAnyValue" or "ForAllValues"

    def holds(self, ctx: RequestContext, resource: str) -> bool:
        present = ctx.get(self.key, resource)
        if self.operator == "Null":
            wanted = {v.lower() for v in self.values}
            is_null = not present
            return ("true" in wanted and is_null) or ("false" in wanted and not is_null)
        match, negated = _OPERATORS[self.operator]
        if not present:
            if self.set_operator == "ForAllValues":
                return True
            if self.set_operator == "ForAnyValue":
                return False
            return self.if_exists or negated

        def one(value: str) -> bool:
            hit = any(match(value, wanted, resource, ctx) for wanted in self.values)
            return not hit if negated else hit

        if self.set_operator == "ForAllValues":
            return all(one(value) for value in present)
        if negated and not self.set_operator:
            return all(one(value) for value in present)
        return any(one(value) for value in present)


def _parse_conditions(block: Any) -> tuple[Condition, ...]:
    if block is None:
        return ()
    if not isinstance(block, dict):
        raise MalformedPolicy("Condition must be an object of operators")
    conditions = []
    for raw_operator, keys in block.items():
        set_operator, _, operator = raw_operator.rpartition(":")
        if set_operator not in ("", "ForAnyValue", "ForAllValues"):
            raise MalformedPolicy(f"Unknown set operator {set_operator!r} in {raw_operator!r}")
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        if base not in _OPERATORS and base != "Null":
            raise MalformedPolicy(f"Unknown condition operator {raw_operator!r}")
        if not isinstance(keys, dict) or not keys:
            raise MalformedPolicy(f"Condition operator {raw_operator} needs keys and values")
        for key, values in keys.items():
            listed = values if isinstance(values, list) else [values]
            texts = tuple(json.dumps(v) if isinstance(v, bool) else str(v) for v in listed)
            conditions.append(Condition(base, context_key(key), texts, if_exists, set_operator))
    return tuple(conditions)


@dataclass(frozen=True, slots=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    not_actions: bool
    resources: tuple[str, ...]
    not_resources: bool
    conditions: tuple[Condition, ...] = ()
    sid: str = ""

    def covers_action(self, action: str) -> bool:
        hit = any(_matches(pattern, action, ignore_case=True) for pattern in self.actions)
        return hit != self.not_actions

    def covers_resource(self, resource: str, ctx: RequestContext) -> bool:
        hit = any(
            _matches(ctx.substitute(pattern, resource), resource) for pattern in self.resources
        )
        return hit != self.not_resources

    def applies(self, action: str, resource: str, ctx: RequestContext) -> bool:
        return (
            self.covers_action(action)
            and self.covers_resource(resource, ctx)
            and all(c.holds(ctx, resource) for c in self.conditions)
        )


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]
    document: str = field(default="", compare=False)

    @functools.cached_property
    def contextual(self) -> bool:
        """Whether a decision may depend on more than (action, resource): conditions or policy
        variables. Decisions of policies that are not can be cached."""
        return any(s.conditions or any("${" in r for r in s.resources) for s in self.statements)

    @classmethod
    def parse(cls, document: str | Mapping[str, Any]) -> Policy:
        if isinstance(document, str):
            try:
                parsed = json.loads(document)
            except json.JSONDecodeError as error:
                raise MalformedPolicy(f"Syntax errors in policy: {error}") from None
            text = document
        else:
            parsed, text = dict(document), json.dumps(document)
        if not isinstance(parsed, dict):
            raise MalformedPolicy("A policy document must be a JSON object")
        raw = parsed.get("Statement")
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise MalformedPolicy("A policy document needs at least one Statement")
        return cls(tuple(_statement(item) for item in raw), text)


def _statement(item: Any) -> Statement:
    if not isinstance(item, dict):
        raise MalformedPolicy("Each Statement must be an object")
    effect = item.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicy("Effect must be Allow or Deny")
    if ("Action" in item) == ("NotAction" in item):
        raise MalformedPolicy("A Statement needs exactly one of Action and NotAction")
    if ("Resource" in item) == ("NotResource" in item):
        raise MalformedPolicy("A Statement needs exactly one of Resource and NotResource")
    actions = _as_list(item.get("Action", item.get("NotAction")), "Action")
    resources = _as_list(item.get("Resource", item.get("NotResource")), "Resource")
    for action in actions:
        if not isinstance(action, str) or (action != "*" and ":" not in action):
            raise MalformedPolicy(f"Action {action!r} must be service:Name or '*'")
    return Statement(
        effect=effect,
        actions=tuple(actions),
        not_actions="NotAction" in item,
        resources=tuple(str(r) for r in resources),
        not_resources="NotResource" in item,
        conditions=_parse_conditions(item.get("Condition")),
        sid=str(item.get("Sid", "")),
    )


def evaluate(
    policies: Iterable[Policy], action: str, resource: str, ctx: RequestContext
) -> tuple[str, Statement | None]:
    """IAM's decision for one action on one resource, and the statement that decided it."""
    allowed: Statement | None = None
    for policy in policies:
        for statement in policy.statements:
            if not statement.applies(action, resource, ctx):
                continue
            if statement.effect == "Deny":
                return EXPLICIT_DENY, statement
            allowed = allowed or statement
    return (ALLOW, allowed) if allowed is not None else (IMPLICIT_DENY, None)
