"""The identity store on both backends: keys, sessions and credentials grants, and
that none of them can be passed off as another."""

from __future__ import annotations

import json
from pathlib import Path

from salvia.iam import IdentityStore

SAGEMAKER = {"Service": "sagemaker.amazonaws.com"}
TRUST = json.dumps(
    {"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": SAGEMAKER}]}
)


def test_secrets_are_sealed_at_rest_and_keys_resolve_to_their_user(
    identities: IdentityStore, tmp_path: Path
) -> None:
    identities.create_user("alice")
    key = identities.create_access_key("alice")
    record = identities.store.get("iam-access-key", key["AccessKeyId"])
    assert record is not None and key["SecretAccessKey"] not in json.dumps(record.body)
    assert (tmp_path / "iam.key").stat().st_mode & 0o077 == 0
    secret, principal = identities.credentials(key["AccessKeyId"], None) or ("", None)
    assert secret == key["SecretAccessKey"]
    assert principal is not None and principal.arn.endswith(":user/alice")
    assert identities.credentials("AKIANOTAKEY000000000", None) is None


def test_grants_and_sessions_are_not_interchangeable(identities: IdentityStore) -> None:
    role = identities.create_role("job", TRUST)
    assert identities.trusts(role, service="sagemaker.amazonaws.com")
    assert not identities.trusts(role, caller="arn:aws:iam::123456789012:user/alice")
    grant = identities.grant(role.arn, "job-1", 3600)
    issued = identities.redeem(grant)
    assert issued is not None and issued["AccessKeyId"].startswith("ASIA")
    found = identities.credentials(issued["AccessKeyId"], issued["SessionToken"])
    assert found is not None and found[1].arn.endswith(":assumed-role/job/job-1")
    assert identities.credentials(issued["AccessKeyId"], grant) is None  # a grant is no session
    assert identities.redeem(issued["SessionToken"]) is None  # a session is no grant
    assert identities.redeem(identities.grant(role.arn, "old", -1)) is None  # run out
    identities.delete("iam-role", "job")
    assert identities.redeem(grant) is None
    assert identities.credentials(issued["AccessKeyId"], issued["SessionToken"]) is None


def test_the_administrator_is_created_once(identities: IdentityStore) -> None:
    first = identities.bootstrap_admin()
    assert first is not None and first["UserName"] == "admin"
    assert identities.bootstrap_admin() is None
