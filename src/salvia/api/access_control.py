"""Access control put together: IAM and STS (query protocol), the audit trail's CloudTrail
`LookupEvents`, and, in the `iam` mode, the guard in front of every request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.model import ServiceModel

from salvia.api.access import AccessGuard
from salvia.api.json_protocol import JsonProtocol, Runner
from salvia.api.query_protocol import QueryProtocol
from salvia.api.router import Router
from salvia.config import Settings
from salvia.errors import SalviaError
from salvia.iam import AuditTrail, IdentityStore, SecretBox
from salvia.resources.iam import AuditQueries, IamOperations, StsOperations
from salvia.resources.registry import collect
from salvia.store.metadata import MetadataStore

log = logging.getLogger(__name__)

# how long a job's credentials last: SageMaker's longest MaxRuntimeInSeconds (5 days)
JOB_SESSION_SECONDS = 5 * 24 * 3600


@dataclass
class AccessControl:
    identities: IdentityStore
    audit: AuditTrail
    guard: AccessGuard | None

    def bootstrap(self) -> dict[str, Any] | None:
        """The first administrator's access key (authenticated mode, first start only)."""
        if self.guard is None:
            return None
        return self.identities.bootstrap_admin()

    def role_credentials(self, role_arn: str, session: str) -> dict[str, str]:
        """A job's execution role as the standard AWS variables (a role Salvia does not know
        gives none: the job then has no access at all)."""
        try:
            issued = self.identities.issue_session(
                role_arn, session[:64], JOB_SESSION_SECONDS, within_role_limit=False
            )
        except SalviaError as error:
            log.warning("no credentials for role %s: %s", role_arn, error.message)
            return {"AWS_ACCESS_KEY_ID": "none", "AWS_SECRET_ACCESS_KEY": "none"}
        return {
            "AWS_ACCESS_KEY_ID": issued["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": issued["SecretAccessKey"],
            "AWS_SESSION_TOKEN": issued["SessionToken"],
        }

    def close(self) -> None:
        self.audit.close()


def install_access_control(
    app: Router,
    settings: Settings,
    store: MetadataStore,
    run: Runner,
    service_model: Callable[[str], ServiceModel],
) -> AccessControl:
    identities = IdentityStore(store, SecretBox.under(settings.home), settings.account_id)
    audit = AuditTrail(store, settings.account_id, settings.region)

    def open_caller() -> dict[str, str]:
        account = settings.account_id
        return {"UserId": account, "Account": account, "Arn": f"arn:aws:iam::{account}:root"}

    app.query = QueryProtocol(
        {
            "iam": (service_model("iam"), collect(IamOperations(identities))),
            "sts": (service_model("sts"), collect(StsOperations(identities, open_caller))),
        },
        run,
    )
    trail = JsonProtocol(service_model("cloudtrail"), collect(AuditQueries(audit)), run)
    app.json_services[trail.prefix] = trail
    guard = None
    if settings.auth_mode == "iam":
        guard = AccessGuard(settings, identities, audit, store.get_tags)
        app.guard = guard
    return AccessControl(identities, audit, guard)
