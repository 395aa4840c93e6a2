"""`salvia iam ...` and `salvia audit`: access control from the terminal, through IAM's and
CloudTrail's APIs (sign with an administrator's key: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).

Role Manager's personas (`salvia iam personas apply data-scientist --user alice`) become managed
policies named after them, created on first use and attached.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from salvia.cli.tables import table
from salvia.iam.personas import PERSONAS, SAGEMAKER_TRUST, persona_policy_name

Command = Callable[[argparse.Namespace], int]


def _iam(args: argparse.Namespace, service: str = "iam") -> Any:
    from salvia.cli.main import _client

    return _client(args, service)


def _document(source: str) -> str:
    """A policy document given inline (JSON) or as a file path."""
    text = source if source.lstrip().startswith("{") else Path(source).read_text()
    json.loads(text)  # a clear error here rather than a MalformedPolicyDocument later
    return text


def _target(args: argparse.Namespace) -> tuple[str, str]:
    for kind in ("user", "group", "role"):
        name = getattr(args, kind, None)
        if name:
            return kind.title(), name
    raise SystemExit("name one of --user, --group or --role")


def _policy_arn(iam: Any, name: str) -> str:
    if name.startswith("arn:"):
        return name
    for page in iam.get_paginator("list_policies").paginate(Scope="All"):
        for policy in page["Policies"]:
            if policy["PolicyName"] == name:
                return str(policy["Arn"])
    raise SystemExit(f"no managed policy named {name}")


def _password(args: argparse.Namespace) -> str:
    """--password, or asked twice without echo (so it stays out of the shell's history)."""
    if isinstance(args.password, str):
        return args.password
    first = getpass.getpass(f"Studio password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("the passwords differ")
    return first


def _set_password(iam: Any, name: str, password: str) -> None:
    """The user's console password (IAM's login profile), created or replaced."""
    try:
        iam.create_login_profile(UserName=name, Password=password)
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_login_profile(UserName=name, Password=password)


def cmd_users(args: argparse.Namespace) -> int:
    iam = _iam(args)
    if args.action == "create":
        user = iam.create_user(UserName=args.name)["User"]
        print(user["Arn"])
        if args.password is not None:
            _set_password(iam, args.name, _password(args))
            print(f"{args.name} may sign in to Studio with that password")
    elif args.action == "password":
        _set_password(iam, args.name, _password(args))
        print(f"{args.name} may sign in to Studio with that password")
    elif args.action == "no-password":
        iam.delete_login_profile(UserName=args.name)
    elif args.action == "delete":
        with contextlib.suppress(iam.exceptions.NoSuchEntityException):
            iam.delete_login_profile(UserName=args.name)
        iam.delete_user(UserName=args.name)
    else:
        rows = [(u["UserName"], u["Arn"], u["CreateDate"]) for u in iam.list_users()["Users"]]
        print(table(("name", "arn", "created"), rows) if rows else "No users.")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    iam = _iam(args)
    if args.action == "create":
        key = iam.create_access_key(UserName=args.user)["AccessKey"]
        print(f"AWS_ACCESS_KEY_ID={key['AccessKeyId']}")
        print(f"AWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}")
        print("The secret is shown this once.", file=sys.stderr)
    elif args.action == "delete":
        iam.delete_access_key(UserName=args.user, AccessKeyId=args.key)
    else:
        keys = iam.list_access_keys(UserName=args.user)["AccessKeyMetadata"]
        rows = [(k["AccessKeyId"], k["Status"], k["CreateDate"]) for k in keys]
        print(table(("access key", "status", "created"), rows) if rows else "No keys.")
    return 0


def cmd_groups(args: argparse.Namespace) -> int:
    iam = _iam(args)
    if args.action == "create":
        print(iam.create_group(GroupName=args.name)["Group"]["Arn"])
    elif args.action == "add-user":
        iam.add_user_to_group(GroupName=args.name, UserName=args.user)
    else:
        rows = [(g["GroupName"], g["Arn"]) for g in iam.list_groups()["Groups"]]
        print(table(("name", "arn"), rows) if rows else "No groups.")
    return 0


def cmd_roles(args: argparse.Namespace) -> int:
    iam = _iam(args)
    if args.action == "create":
        trust = _document(args.trust) if args.trust else json.dumps(SAGEMAKER_TRUST)
        print(iam.create_role(RoleName=args.name, AssumeRolePolicyDocument=trust)["Role"]["Arn"])
    else:
        rows = [(r["RoleName"], r["Arn"]) for r in iam.list_roles()["Roles"]]
        print(table(("name", "arn"), rows) if rows else "No roles.")
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    iam = _iam(args)
    if args.action == "create":
        policy = iam.create_policy(PolicyName=args.name, PolicyDocument=_document(args.document))
        print(policy["Policy"]["Arn"])
    elif args.action in ("attach", "detach"):
        kind, name = _target(args)
        call = getattr(iam, f"{args.action}_{kind.lower()}_policy")
        call(**{f"{kind}Name": name, "PolicyArn": _policy_arn(iam, args.name)})
    elif args.action == "put":
        kind, name = _target(args)
        getattr(iam, f"put_{kind.lower()}_policy")(
            **{
                f"{kind}Name": name,
                "PolicyName": args.name,
                "PolicyDocument": _document(args.document),
            }
        )
    else:
        policies = iam.list_policies(Scope="All")["Policies"]
        print(table(("name", "arn"), [(p["PolicyName"], p["Arn"]) for p in policies]))
    return 0


def cmd_personas(args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = [(name, persona_policy_name(name), text) for name, (text, _) in PERSONAS.items()]
        print(table(("persona", "policy", "what it may do"), rows))
        return 0
    if args.action == "show":
        print(json.dumps(PERSONAS[args.persona][1], indent=2))
        return 0
    iam = _iam(args)
    name = persona_policy_name(args.persona)
    try:
        arn = _policy_arn(iam, name)
    except SystemExit:
        document = json.dumps(PERSONAS[args.persona][1])
        arn = iam.create_policy(
            PolicyName=name, PolicyDocument=document, Description=PERSONAS[args.persona][0]
        )["Policy"]["Arn"]
    kind, target = _target(args)
    getattr(iam, f"attach_{kind.lower()}_policy")(**{f"{kind}Name": target, "PolicyArn": arn})
    print(f"{kind.lower()} {target} now has {name} ({arn})")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    trail = _iam(args, "cloudtrail")
    lookup: dict[str, Any] = {}
    if args.user:
        lookup["LookupAttributes"] = [{"AttributeKey": "Username", "AttributeValue": args.user}]
    elif args.event:
        lookup["LookupAttributes"] = [{"AttributeKey": "EventName", "AttributeValue": args.event}]
    if args.since:
        lookup["StartTime"] = time.time() - args.since * 60
    rows = []
    for page in trail.get_paginator("lookup_events").paginate(**lookup):
        for event in page["Events"]:
            detail = json.loads(event["CloudTrailEvent"])
            if args.denied and detail["outcome"] == "Success":
                continue
            rows.append(
                (
                    event["EventTime"],
                    event.get("Username"),
                    detail["eventSource"].split(".")[0],
                    event["EventName"],
                    detail["resources"][0]["ARN"] if detail["resources"] else "",
                    detail["sourceIPAddress"],
                    detail["outcome"],
                )
            )
            if len(rows) >= args.limit:
                break
        if len(rows) >= args.limit:
            break
    if args.json:
        print(json.dumps([list(map(str, row)) for row in rows]))
    elif rows:
        headers = ("time", "principal", "service", "action", "resource", "source", "outcome")
        print(table(headers, rows))
    else:
        print("No events.")
    return 0


def _targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user")
    parser.add_argument("--group")
    parser.add_argument("--role")


def add_commands(commands: Any) -> None:
    """`salvia iam ...` and `salvia audit`, added to the top-level subcommands."""
    iam = commands.add_parser("iam", help="users, groups, roles, policies and personas")
    iam.add_argument("--endpoint-url", help="the server's URL (default: the running one)")
    kinds = iam.add_subparsers(dest="kind", required=True)

    users = kinds.add_parser("users", help="IAM users")
    users.add_argument("action", choices=("list", "create", "password", "no-password", "delete"))
    users.add_argument("name", nargs="?")
    users.add_argument(
        "--password",
        nargs="?",
        const=True,
        help="Studio sign-in password (IAM login profile); asked for when given no value",
    )
    users.set_defaults(func=cmd_users)

    keys = kinds.add_parser("keys", help="a user's access keys")
    keys.add_argument("action", choices=("list", "create", "delete"))
    keys.add_argument("user")
    keys.add_argument("key", nargs="?")
    keys.set_defaults(func=cmd_keys)

    groups = kinds.add_parser("groups", help="groups of users")
    groups.add_argument("action", choices=("list", "create", "add-user"))
    groups.add_argument("name", nargs="?")
    groups.add_argument("--user")
    groups.set_defaults(func=cmd_groups)

    roles = kinds.add_parser("roles", help="roles (execution roles of jobs and endpoints)")
    roles.add_argument("action", choices=("list", "create"))
    roles.add_argument("name", nargs="?")
    roles.add_argument("--trust", help="trust policy (JSON or file); default: SageMaker may assume")
    roles.set_defaults(func=cmd_roles)

    policies = kinds.add_parser("policies", help="managed and inline policies")
    policies.add_argument("action", choices=("list", "create", "attach", "detach", "put"))
    policies.add_argument("name", nargs="?", help="policy name (or ARN to attach)")
    policies.add_argument("document", nargs="?", help="policy document: JSON or a file")
    _targets(policies)
    policies.set_defaults(func=cmd_policies)

    personas = kinds.add_parser("personas", help="Role Manager's ready personas")
    personas.add_argument("action", choices=("list", "show", "apply"))
    personas.add_argument("persona", nargs="?", choices=sorted(PERSONAS))
    _targets(personas)
    personas.set_defaults(func=cmd_personas)

    audit = commands.add_parser("audit", help="the audit trail: mutating calls and refusals")
    audit.add_argument("--endpoint-url", help="the server's URL (default: the running one)")
    audit.add_argument("--user", help="only this user's (or role session's) events")
    audit.add_argument("--event", help="only this action, e.g. CreateTrainingJob")
    audit.add_argument("--since", type=float, help="only the last N minutes")
    audit.add_argument("--denied", action="store_true", help="only refused or failed calls")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--json", action="store_true", help="rows as JSON")
    audit.set_defaults(func=cmd_audit)
