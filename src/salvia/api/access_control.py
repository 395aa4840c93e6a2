"""Access control put together: IAM and STS (query protocol), the audit trail's CloudTrail
`LookupEvents`, and, in the `iam` mode, the guard in front of every request."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.model import ServiceModel

from salvia.api.access import CREDENTIALS_PATH, AccessGuard
from salvia.api.json_protocol import JsonProtocol, Runner
from salvia.api.query_protocol import QueryProtocol
from salvia.api.router import Router
from salvia.config import Settings
from salvia.iam import AuditTrail, IdentityStore, SecretBox
from salvia.resources.iam import AuditQueries, IamOperations, StsOperations
from salvia.resources.registry import collect
from salvia.store.metadata import MetadataStore

log = logging.getLogger(__name__)


def _loopback_url(public_url: str) -> str:
    """The server's URL on a loopback address (botocore fetches container credentials over
    plain HTTP from loopback only); empty when it does not listen on one."""
    parts = urlsplit(public_url)
    if parts.port is None:
        return ""
    host = parts.hostname or ""
    if host in ("0.0.0.0", "", "localhost"):
        return f"http://127.0.0.1:{parts.port}"
    if host == "::":
        return f"http://[::1]:{parts.port}"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        return ""
    return f"http://{'[' + host + ']' if ':' in host else host}:{parts.port}" if loopback else ""


# how long a job's credentials last: SageMaker's longest MaxRuntimeInSeconds (5 days)
JOB_SESSION_SECONDS = 5 * 24 * 3600
# endpoints live until deleted: their grant outlasts any (deleting the role revokes it)
ENDPOINT_GRANT_SECONDS = 10 * 365 * 24 * 3600


@dataclass
class AccessControl:
    identities: IdentityStore
    audit: AuditTrail
    guard: AccessGuard | None
    # the server's own URL once it listens (jobs reach the credentials endpoint there)
    public_url: Callable[[], str] = lambda: ""
    region: str = "us-east-1"

    def bootstrap(self) -> dict[str, Any] | None:
        """The first administrator's access key (authenticated mode, first start only)."""
        if self.guard is None:
            return None
        return self.identities.bootstrap_admin()

    def endpoint_environment(self, role_arn: str, model: str) -> dict[str, str]:
        """A model server's variables: its ExecutionRoleArn's credentials (renewed for as long
        as the endpoint lives, until the role is deleted) and this server's S3 address."""
        env = self.role_credentials(role_arn, model, ENDPOINT_GRANT_SECONDS)
        url = self.public_url()
        if url:
            env.update(AWS_ENDPOINT_URL=url, AWS_ENDPOINT_URL_S3=url)
        region = self.region
        return {**env, "AWS_REGION": region, "AWS_DEFAULT_REGION": region}

    def role_credentials(self, role_arn: str, session: str, seconds: int = 0) -> dict[str, str]:
        """A job's execution role for its AWS SDK, as SageMaker hands it over: a container
        credentials endpoint on loopback that gives hour-long sessions and renews them for as
        long as a job may run. Where the server is not reachable on loopback, one session for
        that whole time goes in the standard AWS_* variables instead."""
        if self.identities.role_by_arn(role_arn) is None:
            log.warning("no credentials for role %s: it does not exist", role_arn)
            return {"AWS_ACCESS_KEY_ID": "none", "AWS_SECRET_ACCESS_KEY": "none"}
        endpoint = _loopback_url(self.public_url())
        if endpoint:
            return {
                # empty: botocore's chain moves on from the environment to the endpoint
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint + CREDENTIALS_PATH,
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.identities.grant(
                    role_arn, session[:64], seconds or JOB_SESSION_SECONDS
                ),
            }
        issued = self.identities.issue_session(
            role_arn, session[:64], JOB_SESSION_SECONDS, within_role_limit=False
        )
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
    audit = AuditTrail(
        store, settings.account_id, settings.region, settings.audit_retention_days * 86400
    )

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
    return AccessControl(identities, audit, guard, region=settings.region)
