"""Serverless inference (`ServerlessConfig`): a variant's instances start on demand, the first
request that finds none waiting for it (a cold start, counted in the variant's metrics), and
stop once idle for `Settings.serverless_idle_seconds`, down to `ProvisionedConcurrency`.
The instance's memory limit is `MemorySizeInMB`; the gateway throttles requests over
`MaxConcurrency` and enforces serverless limits (4 MB, 60 s).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from salvia.serving.engine import (
    ENDPOINT,
    ENDPOINT_CONFIG,
    DeployFailed,
    EndpointEngine,
    Variant,
    _suffix,
    _variant_dir,
    variant_instance_type,
)

log = logging.getLogger(__name__)
MAX_PAYLOAD = 4 * 1024 * 1024


class Serverless:
    def __init__(self, engine: EndpointEngine, idle_seconds: float) -> None:
        self.engine = engine
        self.idle_seconds = idle_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._reap, name="serverless", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _reap(self) -> None:
        period = min(1.0, self.idle_seconds / 2)
        while not self._stop.wait(period):
            try:
                self.reap_idle(self.idle_seconds)
            except Exception:  # the next pass tries again
                log.exception("serverless reaper")

    def cold_start(self, name: str, variant: Variant) -> bool:
        """Start a serverless variant's instance for a request that found none (blocking; one
        start at a time per variant). True when this call started it (a cold start)."""
        with variant.starting:
            if variant.clients:
                return False
            record = self.engine.ctx.store.get(ENDPOINT, name)
            config = (
                self.engine.ctx.store.get(ENDPOINT_CONFIG, record.body["EndpointConfigName"])
                if record
                else None
            )
            spec = next(
                (v for v in (config.body["ProductionVariants"] if config else [])
                 if v["VariantName"] == variant.name),
                None,
            )  # fmt: skip
            if record is None or spec is None:
                raise DeployFailed(f"Endpoint {name} is gone.")
            model_dir = _variant_dir(self.engine.ctx.endpoints_dir, record, spec) / "model"
            containers = self.engine._containers(record, spec, extract=not model_dir.exists())
            client, handle = self.engine._start_instance(
                record, spec, _suffix(), containers, variant_instance_type(spec)
            )
            started = time.monotonic()
            self.engine.wait_healthy(
                handle, spec.get("ContainerStartupHealthCheckTimeoutInSeconds", 240)
            )
            self.engine.metrics.cold_start(name, variant.name, time.monotonic() - started)
            variant.clients = [*variant.clients, client]
            variant.last_used = time.monotonic()
            self._record_instances(name, variant.name, add=handle)
            return True

    def reap_idle(self, idle_seconds: float) -> None:
        """Stop serverless instances idle for `idle_seconds`, down to ProvisionedConcurrency."""
        now = time.monotonic()
        for name, route in list(self.engine.routes.items()):
            for variant in route.variants:
                if variant.serverless is None or not variant.clients or variant.in_flight:
                    continue
                keep = int(variant.serverless.get("ProvisionedConcurrency") or 0)
                if len(variant.clients) <= keep or now - variant.last_used < idle_seconds:
                    continue
                with variant.starting:
                    idle, variant.clients = variant.clients[keep:], variant.clients[:keep]
                ports = {client.port for client in idle}
                record = self.engine.ctx.store.get(ENDPOINT, name)
                for handle in ((record.body.get("_Instances") or {}).get(variant.name, [])
                               if record else []):  # fmt: skip
                    if handle["Port"] in ports:
                        self.engine.stop_instance(handle, grace_seconds=5)
                        self._record_instances(name, variant.name, remove=handle)
                for client in idle:
                    client.close()

    def _record_instances(
        self,
        name: str,
        variant: str,
        add: dict[str, Any] | None = None,
        remove: dict[str, Any] | None = None,
    ) -> None:
        def change(body: dict[str, Any]) -> None:
            handles = body.setdefault("_Instances", {}).setdefault(variant, [])
            if add is not None:
                handles.append(add)
            if remove is not None:
                handles[:] = [h for h in handles if h["Handle"] != remove["Handle"]]
            for summary in body.get("ProductionVariants", []):
                if summary["VariantName"] == variant:
                    summary["CurrentInstanceCount"] = len(handles)

        self.engine._update(name, change)
