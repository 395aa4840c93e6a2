"""Fixtures of Studio's browser tests: one real server and one Debian Chromium per module, driven
by Playwright, every request and console message of each page recorded.

The browser is Debian's `chromium` package, launched by its path (`make test` installs it);
Playwright's own browser download is never used. Without it a test fails under CI and skips
elsewhere.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SalviaServer

CHROMIUM = Path(os.environ.get("SALVIA_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DESKTOP = {"width": 1280, "height": 900}
TABLET = {"width": 800, "height": 1024}


@pytest.fixture(scope="module")
def studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SalviaServer]:
    server = SalviaServer(tmp_path_factory.mktemp("studio-home")).start()
    yield server
    server.stop()
    server.stop_instances()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"no browser at {CHROMIUM}: `make test` installs Debian's chromium package"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield instance
        instance.close()


@dataclass
class Visit:
    """A browser page with what it asked for and what it complained about."""

    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def open(self, path: str, settle: bool = True) -> Any:
        """Load a page; `settle` also waits for the requests its scripts make at once."""
        response = self.page.goto(self.base + path, wait_until="load")
        if settle:
            self.page.wait_for_load_state("networkidle")
        return response

    def outside_requests(self) -> list[str]:
        outside = []
        for url in self.requests:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme in {"data", "blob", "about"}:
                continue
            if parts.hostname not in LOOPBACK:
                outside.append(url)
        return outside

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
        self.page.screenshot(path=str(ARTIFACTS / f"{safe}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.outside_requests() == []


@pytest.fixture
def visit(
    browser: Any, studio_server: SalviaServer, request: pytest.FixtureRequest
) -> Iterator[Visit]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.set_default_timeout(20_000)
    seen = Visit(page, studio_server.url)
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
    try:
        yield seen
    finally:
        seen.screenshot(request.node.name)
        context.close()
