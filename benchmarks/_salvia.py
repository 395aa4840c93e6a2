"""What the benchmarks share: a free port, waiting for health, and a Salvia server of their own
in a temporary home."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


@dataclass
class Salvia:
    home: Path
    url: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )


@contextmanager
def running_salvia(**settings: str) -> Iterator[Salvia]:
    """A `salvia server` on SQLite in a temporary home; `settings` are extra SALVIA_* values."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "SALVIA_HOME": home, "SALVIA_LOG_LEVEL": "warning", **settings}
        if "SALVIA_DATABASE_URL" not in settings:
            env.pop("SALVIA_DATABASE_URL", None)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "salvia.cli.main", "server", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/healthz", server)
            yield Salvia(Path(home), f"http://127.0.0.1:{port}")
        finally:
            server.terminate()
            server.wait(60)
