"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under a key file kept in Salvia's home.

The key file is created on first use with mode 0600; whoever can read it can read every secret
access key, so it never leaves the home (back it up with the database, keep it apart from dumps).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE = "iam.key"


class SecretBox:
    """Encrypts and decrypts short secrets; derives per-purpose subkeys. Thread-safe."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key

    @classmethod
    def under(cls, home: Path) -> SecretBox:
        path = home / KEY_FILE
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            key = Fernet.generate_key()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
        return cls(path.read_bytes().strip())

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, token: str, ttl: int | None = None) -> str | None:
        """The secret, or None for a token this key did not seal (or older than `ttl` s)."""
        try:
            return self._fernet.decrypt(token.encode("ascii"), ttl=ttl).decode()
        except (InvalidToken, ValueError, UnicodeError):
            return None

    def derive(self, purpose: str, value: str) -> str:
        """A stable secret for `value` (temporary keys' secrets need no storage this way)."""
        digest = hmac.new(self._key + purpose.encode(), value.encode(), hashlib.sha256).digest()
        import base64

        return base64.b64encode(digest).decode("ascii")[:40]
