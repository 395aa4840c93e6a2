"""Identities, policies and the audit trail: who may do what, and what was done.

- `IdentityStore`: users, groups, roles, managed policies and access keys (secrets sealed).
- `Policy` / `evaluate`: IAM's policy language.
- `AuditTrail`: every mutating call and every refusal.
- `personas`: ready policies (AWS managed names, Role Manager personas).
"""

from salvia.iam.audit import AuditEvent, AuditTrail
from salvia.iam.identities import IdentityStore, Principal, current_principal
from salvia.iam.policy import (
    ALLOW,
    EXPLICIT_DENY,
    IMPLICIT_DENY,
    Policy,
    RequestContext,
    context_key,
    evaluate,
)
from salvia.iam.secrets import SecretBox

__all__ = [
    "ALLOW",
    "EXPLICIT_DENY",
    "IMPLICIT_DENY",
    "AuditEvent",
    "AuditTrail",
    "IdentityStore",
    "Policy",
    "Principal",
    "RequestContext",
    "SecretBox",
    "context_key",
    "current_principal",
    "evaluate",
]
