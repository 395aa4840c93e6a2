"""Multi-model endpoints (`Mode: MultiModel`): one model server per instance holds many models,
loaded on first use of a `TargetModel` and unloaded least recently used first when the next one
would not fit the instance's budget.

The platform side of SageMaker's multi-model contract: the gateway fetches
`<ModelDataUrl prefix>/<TargetModel>`, unpacks it once per variant on disk, and drives the
instance's `/models` API (load, unload, invoke). A model's footprint is its unpacked size, a
deterministic stand-in for the memory it takes once loaded; the budget is the container's
`SALVIA_MODEL_CACHE_MB`, or half the instance type's memory (the rest is the server's own).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tarfile
import tempfile
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from salvia.serving.client import InstanceClient, Reply
from salvia.store.objects import ObjectStore, ObjectStoreError

CACHE_VARIABLE = "SALVIA_MODEL_CACHE_MB"


class ModelNotFound(Exception):
    """`TargetModel` names no archive under the endpoint's prefix (or one that cannot unpack)."""


@dataclass(frozen=True)
class Unpacked:
    path: Path
    size: int  # bytes on disk


class ModelLibrary:
    """A variant's models on local disk, fetched from the object store once and shared by the
    variant's instances. Thread-safe: fetches run in worker threads."""

    def __init__(self, objects: ObjectStore, prefix: str, directory: Path) -> None:
        self.objects = objects
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.directory = directory
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    def fetch(self, target: str) -> Unpacked:
        digest = hashlib.sha256(target.encode()).hexdigest()[:20]
        with self._lock:
            lock = self._fetching.setdefault(digest, threading.Lock())
        with lock:
            destination = self.directory / digest
            marker = destination / ".salvia-size"
            if marker.exists():
                return Unpacked(destination / "model", int(marker.read_text()))
            url = self.prefix + target.lstrip("/")
            try:
                data = self.objects.read_bytes(url)
            except (ObjectStoreError, OSError) as error:
                raise ModelNotFound(_download_failed(url, error)) from None
            scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=_made(self.directory)))
            try:
                archive = scratch / "model.tar.gz"
                archive.write_bytes(data)
                with tarfile.open(archive) as tar:
                    tar.extractall(scratch / "model", filter="data")
                archive.unlink()
            except (OSError, tarfile.TarError) as error:
                shutil.rmtree(scratch, ignore_errors=True)
                raise ModelNotFound(f"Could not unpack the model data {url}: {error}") from None
            size = sum(f.stat().st_size for f in (scratch / "model").rglob("*") if f.is_file())
            shutil.rmtree(destination, ignore_errors=True)
            scratch.rename(destination)
            marker.write_text(str(size))
            return Unpacked(destination / "model", size)


class MultiModelClient:
    """One multi-model instance: which models it holds, in least-recently-used order, under its
    byte budget. Safe to share between coroutines of one event loop."""

    def __init__(
        self,
        client: InstanceClient,
        library: ModelLibrary,
        budget_bytes: int,
        cache_enabled: bool = True,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.library = library
        self.budget_bytes = budget_bytes
        self.cache_enabled = cache_enabled  # MultiModelConfig ModelCacheSetting
        self.host, self.port = client.host, client.port
        self.loaded: OrderedDict[str, int] = OrderedDict()  # model -> bytes, oldest use first
        self._lock = asyncio.Lock()
        self._on_event = on_event or (lambda event: None)

    def holds(self, target: str) -> bool:
        return target in self.loaded

    @property
    def used_bytes(self) -> int:
        return sum(self.loaded.values())

    async def invoke(
        self, target: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> Reply:
        """Load `target` if needed (raises ModelNotFound), then predict with it."""
        path = f"/models/{urllib.parse.quote(target, safe='')}/invoke"
        for attempt in range(2):  # a model unloaded by a racing eviction loads again
            refused = await self._ensure_loaded(target, timeout)
            if refused is not None:
                return refused
            self.loaded.move_to_end(target)  # no await since the check: still there
            reply = await self.client.request("POST", path, body, headers, timeout)
            if reply.status != 404 or attempt:
                break
            self.loaded.pop(target, None)
        if not self.cache_enabled:
            async with self._lock:
                await self._unload(target)
        return reply

    async def _ensure_loaded(self, target: str, timeout: float) -> Reply | None:
        if target in self.loaded:
            self._on_event("hit")
            return None
        async with self._lock:
            if target in self.loaded:
                self._on_event("hit")
                return None
            self._on_event("miss")
            unpacked = await asyncio.to_thread(self.library.fetch, target)
            if unpacked.size > self.budget_bytes:
                message = _too_big(target, unpacked, self.budget_bytes)
                return Reply(507, {"content-type": "text/plain"}, message)
            while self.loaded and self.used_bytes + unpacked.size > self.budget_bytes:
                await self._unload(next(iter(self.loaded)))
            request = json.dumps({"model_name": target, "url": str(unpacked.path)}).encode()
            reply = await self.client.request(
                "POST", "/models", request, {"content-type": "application/json"}, timeout
            )
            if reply.status == 409:  # loaded already (a restart of the gateway, not the server)
                reply = Reply(200, reply.headers, reply.body)
            if reply.status != 200:
                return reply
            self.loaded[target] = unpacked.size
            self._on_event("load")
            return None

    async def _unload(self, target: str) -> None:
        if self.loaded.pop(target, None) is None:
            return
        await self.client.request("DELETE", f"/models/{urllib.parse.quote(target, safe='')}")
        self._on_event("unload")

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Reply:
        """Plain calls (a shadow's copy without TargetModel) are refused like SageMaker does."""
        message = b"A multi-model endpoint needs a TargetModel on every request."
        return Reply(400, {"content-type": "text/plain"}, message)

    def close(self) -> None:
        self.client.close()


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _download_failed(url: str, error: Exception) -> str:
    # SageMaker's words, which users search for
    return (
        f"Failed to download model data (url: {url}). Please ensure that there is an object "
        f"located at the URL and that the role passed to CreateModel has permissions to "
        f"download the model. ({type(error).__name__})"
    )


def _too_big(target: str, unpacked: Unpacked, budget: int) -> bytes:
    return (
        f"Model {target} takes {unpacked.size} bytes, more than the instance's whole model "
        f"budget of {budget} bytes; choose a larger instance type or {CACHE_VARIABLE}."
    ).encode()
