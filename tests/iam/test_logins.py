"""Console passwords on both backends: kept only as salted scrypt hashes, checked at sign-in,
and a user's principal for Studio carries the user's policies of now."""

from __future__ import annotations

import json

import pytest

from salvia.errors import PasswordPolicyViolation
from salvia.iam import IdentityStore
from salvia.iam.logins import LoginProfiles

READ = json.dumps({"Statement": [{"Effect": "Allow", "Action": "sagemaker:Describe*",
                                  "Resource": "*"}]})  # fmt: skip


def test_passwords_are_hashed_with_a_salt_of_their_own_and_verified(
    identities: IdentityStore,
) -> None:
    logins = LoginProfiles(identities)
    for name in ("alice", "bob"):
        identities.create_user(name)
        logins.create(name, "the same password")
    stored = [
        identities.get("iam-user", n).body["LoginProfile"]["Password"] for n in ("alice", "bob")
    ]
    assert "the same password" not in json.dumps(stored)
    assert stored[0]["Salt"] != stored[1]["Salt"] and stored[0]["Hash"] != stored[1]["Hash"]
    assert logins.verify("alice", "the same password") == "alice"
    assert logins.verify("alice", "the same passwore") is None
    assert logins.verify("nobody", "the same password") is None  # the decoy hash, same cost
    identities.create_user("carol")
    assert logins.verify("carol", "") is None  # no login profile: no sign-in
    with pytest.raises(PasswordPolicyViolation):
        logins.update("alice", "short")
    logins.update("alice", "a new password")
    assert logins.verify("alice", "the same password") is None
    assert logins.verify("alice", "a new password") == "alice"


def test_a_users_principal_follows_its_policies(identities: IdentityStore) -> None:
    identities.create_user("dora")
    principal = identities.user_principal("dora")
    assert principal is not None and principal.policies == ()
    assert principal.arn == "arn:aws:iam::123456789012:user/dora"
    identities.put_inline_policy("iam-user", "dora", "read", READ)
    renewed = identities.user_principal("dora")
    assert renewed is not None and len(renewed.policies) == 1
    assert identities.user_principal("nobody") is None
