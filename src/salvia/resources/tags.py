"""AddTags, ListTags and DeleteTags on the ARN of any resource Salvia holds."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from salvia.errors import ValidationException
from salvia.resources.common import ResourceContext, tag_pairs
from salvia.resources.registry import operation
from salvia.store.metadata import Record

MAX_TAGS = 50


class Tags:
    def __init__(self, ctx: ResourceContext) -> None:
        self.ctx = ctx

    def _resource(self, arn: str) -> Record:
        record = self.ctx.store.get_by_arn(arn)
        if record is None:
            raise ValidationException(f"Could not find resource '{arn}'.")
        return record

    @operation("AddTags")
    def add_tags(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._resource(request["ResourceArn"])
        pairs = tag_pairs(request["Tags"])
        keys = {key for key, _ in self.ctx.store.get_tags(record.arn)} | {k for k, _ in pairs}
        if len(keys) > MAX_TAGS:
            raise ValidationException(
                f"Resource '{record.arn}' would have {len(keys)} tags; the maximum is {MAX_TAGS}."
            )
        self.ctx.store.set_tags(record.arn, pairs)
        return {"Tags": request["Tags"]}

    @operation("ListTags")
    def list_tags(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._resource(request["ResourceArn"])
        tags = self.ctx.store.get_tags(record.arn)
        start = _offset(request.get("NextToken"))
        size = request.get("MaxResults", MAX_TAGS)
        page = tags[start : start + size]
        response: dict[str, Any] = {"Tags": [{"Key": k, "Value": v} for k, v in page]}
        if start + size < len(tags):
            response["NextToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return response

    @operation("DeleteTags")
    def delete_tags(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self._resource(request["ResourceArn"])
        self.ctx.store.delete_tags(record.arn, request["TagKeys"])
        return {}


def _offset(token: str | None) -> int:
    # A resource has at most 50 tags, so an offset is a stable enough cursor here.
    if not token:
        return 0
    try:
        return max(int(base64.urlsafe_b64decode(token.encode()).decode()), 0)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValidationException(
            "The NextToken is invalid or does not match this request."
        ) from None
