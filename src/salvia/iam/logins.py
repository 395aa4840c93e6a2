"""Console passwords: IAM's login profiles, which Studio's sign-in checks.

A user's password is kept only as a scrypt hash (the standard library's `hashlib.scrypt`) with a
random salt of its own, in the user's record beside its policies; checking one costs the same
slow derivation whether or not the user exists, so timing does not tell who has a password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from salvia.errors import EntityAlreadyExists, NoSuchEntity, PasswordPolicyViolation
from salvia.iam.identities import USER, IdentityStore
from salvia.store.metadata import Record

# scrypt's cost: 16 MiB and ~40 ms a check, OWASP's floor for interactive sign-in
_N, _R, _P = 2**14, 8, 1
MIN_LENGTH = 8  # IAM's default password policy
MAX_LENGTH = 128


def hash_password(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    return {"Salt": _b64(salt), "Hash": _b64(_derive(password, salt, _N, _R, _P)),
            "N": _N, "R": _R, "P": _P}  # fmt: skip


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_policy(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise PasswordPolicyViolation(
            f"Password should have a minimum length of {MIN_LENGTH} and at most {MAX_LENGTH} "
            f"characters; it has {len(password)}."
        )


# a hash nobody's password matches, checked for unknown users so they cost the same time
_DECOY = hash_password(secrets.token_urlsafe(16))


class LoginProfiles:
    """Create, read, change and delete users' console passwords; verify one at sign-in.

    Thread-safe as the `IdentityStore` it writes through is."""

    def __init__(self, identities: IdentityStore) -> None:
        self.ids = identities

    def create(self, user: str, password: str, reset_required: bool = False) -> dict[str, Any]:
        record = self.ids.get(USER, user)
        if record.body.get("LoginProfile"):
            raise EntityAlreadyExists(f"Login Profile for user {record.name} already exists.")
        _check_policy(password)
        profile = {"CreateDate": self.ids.clock.now(), "PasswordResetRequired": reset_required,
                   "Password": hash_password(password)}  # fmt: skip

        def put(found: Record) -> None:
            found.body["LoginProfile"] = profile

        return _shown(self.ids.update(USER, record.name, put))

    def get(self, user: str) -> dict[str, Any]:
        record = self.ids.get(USER, user)
        if not record.body.get("LoginProfile"):
            raise NoSuchEntity(f"Login Profile for User {record.name} cannot be found.")
        return _shown(record)

    def update(
        self, user: str, password: str | None = None, reset_required: bool | None = None
    ) -> None:
        self.get(user)  # raises NoSuchEntity
        if password is not None:
            _check_policy(password)
        hashed = hash_password(password) if password is not None else None

        def change(found: Record) -> None:
            profile = found.body["LoginProfile"]
            if hashed is not None:
                profile["Password"] = hashed
            if reset_required is not None:
                profile["PasswordResetRequired"] = reset_required

        self.ids.update(USER, user, change)

    def delete(self, user: str) -> None:
        self.get(user)  # raises NoSuchEntity

        def drop(found: Record) -> None:
            found.body.pop("LoginProfile", None)

        self.ids.update(USER, user, drop)

    def verify(self, user: str, password: str) -> str | None:
        """The user's name (as stored) when `password` is theirs, else None."""
        record = self.ids.store.get(USER, user) if user else None
        profile = (record.body.get("LoginProfile") if record is not None else None) or {}
        stored = profile.get("Password") or _DECOY
        salt = base64.b64decode(stored["Salt"])
        derived = _derive(password[:MAX_LENGTH], salt, stored["N"], stored["R"], stored["P"])
        matches = hmac.compare_digest(derived, base64.b64decode(stored["Hash"]))
        return record.name if matches and record is not None and profile else None


def _shown(record: Record) -> dict[str, Any]:
    profile = record.body["LoginProfile"]
    return {"UserName": record.name, "CreateDate": profile["CreateDate"],
            "PasswordResetRequired": bool(profile.get("PasswordResetRequired"))}  # fmt: skip
