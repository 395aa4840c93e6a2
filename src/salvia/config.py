"""Settings, read in one place: environment variables over `<home>/config.toml` over defaults.

Every other module receives a `Settings`; nothing else reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8484
_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path("~/.salvia").expanduser())
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    region: str = "us-east-1"
    account_id: str = "123456789012"
    # SQLAlchemy URL; empty means SQLite at <home>/salvia.db
    database_url: str = ""
    # An S3-compatible endpoint for the object store; empty means the local directory <home>/objects
    s3_endpoint_url: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # "open" accepts any well-formed SigV4 signature without checking keys (loopback only);
    # "iam" verifies every signature against the keys Salvia issued and evaluates policies
    auth_mode: str = "open"
    # lets "open" serve a non-loopback address: anyone who can reach it can do anything
    insecure_open_access: bool = False
    log_level: str = "info"
    # where job instances run: "local" processes or a "ray" cluster
    executor: str = "local"
    # the Ray cluster's address for executor="ray"; empty starts a local one
    ray_address: str = ""
    # seconds between two passes of the endpoint autoscaler (Application Auto Scaling policies)
    autoscaling_period: float = 5.0
    # SNS topic ARNs of async endpoints' notifications mapped to webhook URLs:
    # "arn:aws:sns:us-east-1:123456789012:done=http://host/hook,arn:...:failed=http://..."
    notification_webhooks: str = ""
    # how long an async endpoint's queue stays empty before a MinCapacity-0 variant scales to zero
    async_scale_in_seconds: float = 60.0
    # how long a serverless instance stays up without a request
    serverless_idle_seconds: float = 60.0
    # how long the audit trail (iam mode) keeps an event; older ones are deleted in the background
    audit_retention_days: float = 90.0
    # URLs (comma-separated) that receive model registry events ("SageMaker Model Package State
    # Change", EventBridge-shaped JSON) on every approval status a model package version takes
    model_events_webhook: str = ""

    def webhooks(self) -> dict[str, str]:
        """`notification_webhooks` as {topic ARN: URL}."""
        pairs = (
            item.split("=", 1) for item in self.notification_webhooks.split(",") if "=" in item
        )
        return {topic.strip(): url.strip() for topic, url in pairs}

    def model_event_webhooks(self) -> list[str]:
        """`model_events_webhook` as a list of URLs."""
        return [url.strip() for url in self.model_events_webhook.split(",") if url.strip()]

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'salvia.db'}"

    @property
    def objects_dir(self) -> Path:
        return self.home / "objects"

    @property
    def runtime_dir(self) -> Path:
        """Scratch space of the running server (multipart parts, pid file); not user data."""
        return self.home / "run"

    def arn(self, resource_type: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}:{resource_type}/{name}"

    def validate(self) -> Settings:
        if not _ACCOUNT.fullmatch(self.account_id):
            raise ValueError(f"account_id must be 12 digits, got {self.account_id!r}")
        if not _REGION.fullmatch(self.region):
            raise ValueError(f"region must look like us-east-1, got {self.region!r}")
        if self.auth_mode not in {"open", "iam"}:
            raise ValueError(f"auth_mode must be 'open' or 'iam', got {self.auth_mode!r}")
        if self.auth_mode == "open" and not _loopback(self.host) and not self.insecure_open_access:
            raise ValueError(
                f"refusing to listen on {self.host} without authentication: open mode accepts "
                "any signature, so it is allowed only on a loopback address. Use auth_mode "
                "'iam' (SALVIA_AUTH_MODE=iam), or pass --insecure-open-access to accept that "
                "anyone who can reach this address can do anything"
            )
        if self.executor not in {"local", "ray"}:
            raise ValueError(f"executor must be 'local' or 'ray', got {self.executor!r}")
        if not self.serverless_idle_seconds > 0:
            raise ValueError(
                f"serverless_idle_seconds must be > 0, got {self.serverless_idle_seconds}"
            )
        if not self.async_scale_in_seconds > 0:
            raise ValueError(
                f"async_scale_in_seconds must be > 0, got {self.async_scale_in_seconds}"
            )
        if not self.audit_retention_days > 0:
            raise ValueError(f"audit_retention_days must be > 0, got {self.audit_retention_days}")
        if not self.autoscaling_period > 0:
            raise ValueError(f"autoscaling_period must be > 0, got {self.autoscaling_period}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        return self


_ENV = {
    "SALVIA_HOME": "home",
    "SALVIA_HOST": "host",
    "SALVIA_PORT": "port",
    "SALVIA_REGION": "region",
    "SALVIA_ACCOUNT_ID": "account_id",
    "SALVIA_DATABASE_URL": "database_url",
    "SALVIA_S3_ENDPOINT_URL": "s3_endpoint_url",
    "SALVIA_S3_ACCESS_KEY_ID": "s3_access_key_id",
    "SALVIA_S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
    "SALVIA_AUTH_MODE": "auth_mode",
    "SALVIA_INSECURE_OPEN_ACCESS": "insecure_open_access",
    "SALVIA_LOG_LEVEL": "log_level",
    "SALVIA_EXECUTOR": "executor",
    "SALVIA_RAY_ADDRESS": "ray_address",
    "SALVIA_AUTOSCALING_PERIOD": "autoscaling_period",
    "SALVIA_NOTIFICATION_WEBHOOKS": "notification_webhooks",
    "SALVIA_ASYNC_SCALE_IN_SECONDS": "async_scale_in_seconds",
    "SALVIA_SERVERLESS_IDLE_SECONDS": "serverless_idle_seconds",
    "SALVIA_MODEL_EVENTS_WEBHOOK": "model_events_webhook",
    "SALVIA_AUDIT_RETENTION_DAYS": "audit_retention_days",
}


def _coerce(name: str, value: Any) -> Any:
    if name == "home":
        return Path(str(value)).expanduser().resolve()
    if name == "port":
        return int(value)
    if name == "insecure_open_access":
        return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes"}
    if name in (
        "autoscaling_period",
        "async_scale_in_seconds",
        "serverless_idle_seconds",
        "audit_retention_days",
    ):
        return float(value)
    return str(value)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then `<home>/config.toml`, then `SALVIA_*` variables, then explicit overrides."""
    env = os.environ if env is None else env
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    home = overrides.get("home") or env.get("SALVIA_HOME") or Settings().home
    config_file = Path(str(home)).expanduser() / "config.toml"
    if config_file.is_file():
        with config_file.open("rb") as fh:
            for key, value in tomllib.load(fh).items():
                if key not in known:
                    raise ValueError(f"{config_file}: unknown setting {key!r}")
                values[key] = value
    for var, name in _ENV.items():
        if env.get(var):
            values[name] = env[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["home"] = values.get("home", home)
    coerced = {k: _coerce(k, v) for k, v in values.items()}
    return replace(Settings(), **coerced).validate()
