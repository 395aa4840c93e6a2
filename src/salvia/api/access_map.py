"""What each request asks for in IAM's terms: (action, resource ARN) pairs and request context.

SageMaker operations are `sagemaker:<Operation>` on the ARN Salvia gives the named resource (List*
and other unscoped operations on `*`); passing a role (`RoleArn`, `ExecutionRoleArn`) also needs
`iam:PassRole` on it. S3 requests map to S3's actions on `arn:aws:s3:::bucket[/key]`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from salvia.config import Settings

Access = tuple[str, str]  # (action, resource)

_VERBS = (
    "Create", "Describe", "Delete", "Update", "Stop", "Start", "Get", "Put", "Retry",
    "Send", "Add", "Associate", "Disassociate", "Import", "Register", "Deregister",
)  # fmt: skip
# resource types whose ARN part is not the noun of the operation in kebab case
_ARN_TYPES = {
    "Trial": "experiment-trial",
    "TrialComponent": "experiment-trial-component",
    "AutoMLJob": "automl-job",
    "AutoMLJobV2": "automl-job",
}
_KEBAB = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
PASSED_ROLES = ("RoleArn", "ExecutionRoleArn")
READ_PREFIXES = ("Describe", "List", "Get", "Search", "BatchGet", "BatchDescribe", "Query")


def is_read_only(operation: str) -> bool:
    return operation.startswith(READ_PREFIXES) or operation == "LookupEvents"


@functools.lru_cache(maxsize=1024)
def _noun(operation: str) -> str | None:
    for verb in _VERBS:
        if operation.startswith(verb) and len(operation) > len(verb):
            return operation[len(verb) :]
    return None


@functools.lru_cache(maxsize=1024)
def _arn_type(noun: str) -> str:
    return _ARN_TYPES.get(noun) or _KEBAB.sub("-", noun).lower()


@functools.lru_cache(maxsize=1024)
def _naming(operation: str) -> tuple[str, str, str]:
    """(action, the member naming the resource, its ARN type) of a SageMaker operation; the
    member is "" for operations that name none."""
    noun = _noun(operation)
    if noun is None:
        return f"sagemaker:{operation}", "", ""
    return f"sagemaker:{operation}", f"{noun}Name", _arn_type(noun)


def sagemaker_access(operation: str, params: Mapping[str, Any], settings: Settings) -> list[Access]:
    action, member, arn_type = _naming(operation)
    resource = "*"
    arn = params.get("ResourceArn")
    if isinstance(arn, str):
        resource = arn
    elif member:
        name = params.get(member)
        if isinstance(name, str) and name:
            resource = name if name.startswith("arn:") else settings.arn(arn_type, name.lower())
    access = [(action, resource)]
    for passed in PASSED_ROLES:
        role = params.get(passed)
        if isinstance(role, str) and role:
            access.append(("iam:PassRole", role))
    return access


def request_tags(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """aws:RequestTag/<key> and aws:TagKeys of a request that carries `Tags`."""
    tags = params.get("Tags")
    if not isinstance(tags, list):
        return {}
    context: dict[str, list[str]] = {}
    keys = []
    for tag in tags:
        if isinstance(tag, dict) and isinstance(tag.get("Key"), str):
            keys.append(tag["Key"])
            context[f"aws:RequestTag/{tag['Key']}"] = [str(tag.get("Value", ""))]
    context["aws:TagKeys"] = keys
    return context


def instance_types(params: Any, depth: int = 0) -> list[str]:
    """sagemaker:InstanceTypes: every InstanceType a request names (resource configs, variants)."""
    found: list[str] = []
    if depth > 4:
        return found
    if isinstance(params, dict):
        for key, value in params.items():
            if key == "InstanceType" and isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict | list):
                found.extend(instance_types(value, depth + 1))
    elif isinstance(params, list):
        for item in params:
            found.extend(instance_types(item, depth + 1))
    return found


def s3_arn(bucket: str, key: str = "") -> str:
    return f"arn:aws:s3:::{bucket}/{key}" if key else f"arn:aws:s3:::{bucket}"


def s3_access(
    method: str, bucket: str, key: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> list[Access]:
    """S3's action(s) for one request (CopyObject also reads its source)."""
    if not bucket:
        return [("s3:ListAllMyBuckets", "*")]
    if not key:
        if method in ("GET", "HEAD"):
            if "location" in query:
                return [("s3:GetBucketLocation", s3_arn(bucket))]
            if "uploads" in query:
                return [("s3:ListBucketMultipartUploads", s3_arn(bucket))]
            return [("s3:ListBucket", s3_arn(bucket))]
        if method == "PUT":
            return [("s3:CreateBucket", s3_arn(bucket))]
        if method == "DELETE":
            return [("s3:DeleteBucket", s3_arn(bucket))]
        return [("s3:DeleteObject", s3_arn(bucket, "*"))]  # DeleteObjects: keys checked apart
    arn = s3_arn(bucket, key)
    if method in ("GET", "HEAD"):
        if "uploadId" in query:
            return [("s3:ListMultipartUploadParts", arn)]
        return [("s3:GetObject", arn)]
    if method == "DELETE":
        return [("s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject", arn)]
    access = [("s3:PutObject", arn)]
    source = headers.get("x-amz-copy-source")
    if source:
        from urllib.parse import unquote

        source_path = unquote(source.split("?", 1)[0]).lstrip("/")
        src_bucket, _, src_key = source_path.partition("/")
        access.append(("s3:GetObject", s3_arn(src_bucket, src_key)))
    return access
