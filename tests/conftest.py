"""Fixtures that start the real Salvia server on a free loopback port and drive it with boto3.

Every integration test runs once per metadata backend: SQLite always, PostgreSQL when
SALVIA_TEST_POSTGRES_URL names a server (`make test` sets it when one answers locally).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

POSTGRES_URL = os.environ.get("SALVIA_TEST_POSTGRES_URL", "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone server: a real S3-compatible endpoint, for the S3 object-store backend."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path_factory.mktemp("moto") / "moto.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (exit {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class SalviaServer:
    """A `salvia server` subprocess with its own home and database."""

    def __init__(
        self, home: Path, database_url: str = "", env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.database_url = database_url
        self.extra_env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # what `client()` signs with: any key in open mode, the administrator's in iam mode
        self.credentials: tuple[str, ...] = ("testing", "testing")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SalviaServer:
        env = {**os.environ, "SALVIA_HOME": str(self.home), "SALVIA_LOG_LEVEL": "warning"}
        env.pop("SALVIA_DATABASE_URL", None)
        if self.database_url:
            env["SALVIA_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        with (self.home / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "salvia.cli.main", "server", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def stop_instances(self) -> None:
        """End job and endpoint instances left running: by design they outlive the server
        (a restarted one re-attaches), so a test's teardown stops them itself."""
        from salvia.compute.local import LocalProcessExecutor

        state = self.home / "run" / "executor"
        if not state.is_dir():
            return
        executor = LocalProcessExecutor(state)
        for handle in (p.name for p in state.iterdir() if p.is_dir()):
            executor.stop(handle, grace_seconds=2)

    def restart(self) -> SalviaServer:
        self.stop()
        return self.start()

    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin_credentials(self) -> tuple[str, str]:
        """The administrator's key that an authenticated server prints on its first start."""
        log = self.log()
        key = log.split("AWS_ACCESS_KEY_ID=", 1)[1].split()[0]
        secret = log.split("AWS_SECRET_ACCESS_KEY=", 1)[1].split()[0]
        return key, secret

    def client(
        self, service: str = "sagemaker", credentials: tuple[str, ...] | None = None, **config: Any
    ) -> Any:
        key, secret, *token = credentials or self.credentials
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token[0] if token else None,
            # the server, not boto3, must reject bad input: client-side checks are off
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                parameter_validation=False,
                **config,
            ),
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `one_backend` drive processes (model servers, jobs) whose use of the store
    other tests cover on both backends: they run on SQLite only, to keep the suite short."""
    skip = pytest.mark.skip(reason="one_backend: covered on SQLite; the store path is tested")
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if item.get_closest_marker("one_backend") and params.get("backend") == "postgres":
            item.add_marker(skip)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not POSTGRES_URL:
        pytest.skip("SALVIA_TEST_POSTGRES_URL is not set")
    return str(request.param)


def fresh_database(backend: str) -> tuple[str, Any]:
    """A new, empty database for one server: SQLite by file, PostgreSQL by CREATE DATABASE."""
    if backend == "sqlite":
        return "", lambda: None
    from sqlalchemy import create_engine, text

    name = f"salvia_test_{uuid.uuid4().hex[:12]}"
    admin_url = POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, drop


@pytest.fixture(scope="module")
def server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SalviaServer]:
    """One server per test module and backend; tests use unique names so they can share it."""
    url, drop = fresh_database(backend)
    instance = SalviaServer(tmp_path_factory.mktemp("home"), url).start()
    yield instance
    instance.stop()
    instance.stop_instances()
    drop()


@pytest.fixture(scope="module")
def iam_server(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SalviaServer]:
    """One server per test module and backend in authenticated mode (SALVIA_AUTH_MODE=iam),
    whose `client()` signs as the administrator it created on its first start."""
    url, drop = fresh_database(backend)
    home = tmp_path_factory.mktemp("home")
    instance = SalviaServer(home, url, env={"SALVIA_AUTH_MODE": "iam"})
    instance.start()
    instance.credentials = instance.admin_credentials()
    yield instance
    instance.stop()
    instance.stop_instances()
    drop()


@pytest.fixture
def own_server(backend: str, tmp_path: Path) -> Iterator[SalviaServer]:
    """A server of the test's own, for tests that restart it or need an empty database."""
    url, drop = fresh_database(backend)
    instance = SalviaServer(tmp_path / "home", url)
    instance.home.mkdir()
    instance.start()
    yield instance
    if instance.process is not None and instance.process.poll() is None:
        instance.stop()
    instance.stop_instances()
    drop()


@pytest.fixture
def sm(server: SalviaServer) -> Any:
    return server.client()


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
