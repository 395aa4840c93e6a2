"""Endpoints: each production variant's model-server instances (started with the primitives of
`instances`), and the routing table the gateway reads.

Desired state lives in the metadata store (the endpoint's config and status); the engine brings
the instances to it in a thread per endpoint: fetch and unpack the model, start the instances,
wait for `/ping`, then InService — or Failed with the reason. Instance handles and ports are
stored, so a restarted server re-attaches to instances that still run and replaces lost ones.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salvia.compute.executor import State
from salvia.compute.instance_types import InstanceType
from salvia.compute.instance_types import lookup as lookup_instance_type
from salvia.serving.instances import (
    ContainerSetup,
    DeployFailed,
    Instance,
    InstanceManager,
    ServingContext,
    processes_of,
)
from salvia.serving.metrics import InvocationMetrics
from salvia.serving.multi_model import ModelLibrary, MultiModelClient
from salvia.store.metadata import Record

log = logging.getLogger(__name__)

ENDPOINT = "endpoint"
ENDPOINT_CONFIG = "endpoint-config"


@dataclass
class Variant:
    name: str
    weight: float
    clients: list[Instance]
    _next: int = 0
    # serverless variants: instances start on demand (see `cold_start`) and stop when idle
    serverless: dict[str, Any] | None = None
    in_flight: int = 0
    last_used: float = 0.0
    starting: threading.Lock = field(default_factory=threading.Lock)

    def pick(self) -> Instance:
        self._next = (self._next + 1) % len(self.clients)
        return self.clients[self._next]

    def pick_for(self, target_model: str) -> Instance:
        """A multi-model variant sends a model's requests to an instance that holds it."""
        for client in self.clients:
            if isinstance(client, MultiModelClient) and client.holds(target_model):
                return client
        return self.pick()


@dataclass
class Route:
    variants: list[Variant] = field(default_factory=list)
    capture: dict[str, Any] | None = None  # the endpoint config's DataCaptureConfig
    # shadow variants get a sampled copy of each request; their answers are never returned
    shadows: list[tuple[Variant, float]] = field(default_factory=list)  # (variant, sampling 0-1)

    def choose(self, target: str | None = None) -> Variant | None:
        if target is not None:
            return next((v for v in self.variants if v.name == target), None)
        live = [v for v in self.variants if (v.clients or v.serverless) and v.weight > 0]
        if not live:
            return None
        total = sum(v.weight for v in live)
        point = random.random() * total
        for variant in live:
            point -= variant.weight
            if point <= 0:
                return variant
        return live[-1]


class EndpointEngine(InstanceManager):
    """Owns the routing table. Thread-safe; `routes` is read by the gateway without locks
    (a dict swap is atomic)."""

    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        self.routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._libraries: dict[str, ModelLibrary] = {}  # multi-model archives, per directory
        self.metrics = InvocationMetrics()  # the gateway's per-variant figures

    # --- public -----------------------------------------------------------------------------

    def deploy(self, name: str) -> None:
        self._spawn(name, lambda: self._deploy(name))

    def delete(self, name: str) -> None:
        self._spawn(name, lambda: self._undeploy(name))

    def update(self, name: str, config_name: str) -> None:
        """Blue/green: the new config's fleet must be healthy before traffic moves to it; when it
        is not, the old fleet keeps serving and the endpoint returns to InService (rollback)."""
        self._spawn(name, functools.partial(self._blue_green, name, config_name))

    def rescale(
        self,
        name: str,
        desired: list[dict[str, Any]],
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Apply `UpdateEndpointWeightsAndCapacities`: new weights at once, instance counts by
        starting (healthy first) or stopping instances (down to zero). `on_done` runs after."""
        self._spawn(name, functools.partial(self._rescale_or_report, name, desired, on_done))

    def _rescale_or_report(
        self, name: str, desired: list[dict[str, Any]], on_done: Callable[[], None] | None
    ) -> None:
        try:
            self._rescale(name, desired)
        except Exception as error:  # an instance that never got healthy: keep serving
            reason = f"Scaling failed and the endpoint kept its serving instances: {error}"

            def failed(body: dict[str, Any]) -> None:
                body["EndpointStatus"] = "InService"
                body["FailureReason"] = reason[:1024]

            self._update(name, failed)
        finally:
            if on_done is not None:
                on_done()

    def recover(self) -> None:
        from salvia.store.metadata import ListQuery

        records = self.ctx.store.list_records(ListQuery(kind=ENDPOINT, limit=1000))
        for record in records.records:
            status = record.body.get("EndpointStatus")
            if status in {"InService", "Creating", "Updating"}:
                self._spawn(record.name, functools.partial(self._reattach, record))
            elif status == "Deleting":
                self._spawn(record.name, functools.partial(self._undeploy, record.name))

    def shutdown(self) -> None:
        for route in list(self.routes.values()):
            for variant in route.variants:
                for client in variant.clients:
                    client.close()

    def _spawn(self, name: str, work: Callable[[], None]) -> None:
        def run() -> None:
            try:
                work()
            except Exception:
                log.exception("endpoint %s", name)

        thread = threading.Thread(target=run, name=f"endpoint-{name}", daemon=True)
        with self._lock:
            self._threads[name.lower()] = thread
        thread.start()

    # --- deploying --------------------------------------------------------------------------

    def _update(self, name: str, change: Callable[[dict[str, Any]], None]) -> Record | None:
        def mutate(record: Record) -> None:
            change(record.body)
            record.status = record.body.get("EndpointStatus")

        return self.ctx.store.update(ENDPOINT, name, mutate, self.ctx.clock.now())

    def _deploy(self, name: str) -> None:
        record = self.ctx.store.get(ENDPOINT, name)
        if record is None:
            return
        try:
            route, instances = self._start_variants(record)
        except DeployFailed as failure:
            reason = str(failure)

            def failed(body: dict[str, Any]) -> None:
                body["EndpointStatus"] = "Failed"
                body["FailureReason"] = reason[:1024]

            self._update(name, failed)
            return
        self.routes[name.lower()] = route

        def in_service(body: dict[str, Any]) -> None:
            body["EndpointStatus"] = "InService"
            body["_Instances"] = instances
            for summary in body.get("ProductionVariants", []):
                summary["CurrentInstanceCount"] = summary.get("DesiredInstanceCount")
                summary["CurrentWeight"] = summary.get("DesiredWeight")
                summary["VariantStatus"] = [{"Status": "InService"}]

        self._update(name, in_service)

    def _start_variants(self, record: Record) -> tuple[Route, dict[str, list[dict[str, Any]]]]:
        config = self.ctx.store.get(ENDPOINT_CONFIG, record.body["EndpointConfigName"])
        if config is None:
            raise DeployFailed(f"Endpoint config {record.body['EndpointConfigName']} is gone.")
        route = Route(capture=config.body.get("DataCaptureConfig"))
        instances: dict[str, list[dict[str, Any]]] = {}
        started: list[dict[str, Any]] = []
        production = config.body["ProductionVariants"]
        shadows = config.body.get("ShadowProductionVariants") or []
        total = sum(v.get("InitialVariantWeight", 1.0) for v in production) or 1.0
        try:
            for variant in [*production, *shadows]:
                clients, handles = self._start_variant(record, variant)
                started += handles
                instances[variant["VariantName"]] = handles
                live = Variant(
                    variant["VariantName"],
                    variant.get("InitialVariantWeight", 1.0),
                    clients,
                    serverless=variant.get("ServerlessConfig"),
                )
                if variant in shadows:
                    # a shadow's weight relative to production's is the share it mirrors
                    route.shadows.append((live, min(live.weight / total, 1.0)))
                else:
                    route.variants.append(live)
        except Exception:
            for handle in started:
                self.stop_instance(handle, grace_seconds=5)
            raise
        return route, instances

    def _containers(
        self, record: Record, variant: dict[str, Any], extract: bool = True
    ) -> list[ContainerSetup]:
        root = _variant_dir(self.ctx.endpoints_dir, record, variant)
        return self.prepare_model(variant["ModelName"], root, extract)

    def _start_variant(
        self, record: Record, variant: dict[str, Any]
    ) -> tuple[list[Instance], list[dict[str, Any]]]:
        containers = self._containers(record, variant)
        instance_type = variant_instance_type(variant)
        count = variant.get("InitialInstanceCount", 1)
        if variant.get("ServerlessConfig"):  # only the provisioned ones start with the endpoint
            count = variant["ServerlessConfig"].get("ProvisionedConcurrency", 0)
        timeout = variant.get("ContainerStartupHealthCheckTimeoutInSeconds", 240)
        clients, handles = [], []
        try:
            for index in range(count):
                client, handle = self._start_instance(
                    record, variant, index, containers, instance_type
                )
                clients.append(client)
                handles.append(handle)
            for handle in handles:
                self.wait_healthy(handle, timeout)
        except Exception:
            for handle in handles:
                self.stop_instance(handle, grace_seconds=5)
            raise
        return clients, handles

    def _start_instance(
        self,
        record: Record,
        variant: dict[str, Any],
        index: int,
        containers: list[ContainerSetup],
        instance_type: Any,
    ) -> tuple[Instance, dict[str, Any]]:
        root = _variant_dir(self.ctx.endpoints_dir, record, variant) / f"instance-{index}"
        host = f"{variant['VariantName']}-{index}"
        instance_client, instance = self.start_instance(
            record.name, host, root, containers, instance_type
        )
        if instance.get("MultiModel") is not None:
            instance["MultiModel"].update(Endpoint=record.name, Variant=variant["VariantName"])
            instance_client = self._client(instance)
        return instance_client, instance

    def _rescale(self, name: str, desired: list[dict[str, Any]]) -> None:
        record = self.ctx.store.get(ENDPOINT, name)
        route = self.routes.get(name.lower())
        config = (
            self.ctx.store.get(ENDPOINT_CONFIG, record.body["EndpointConfigName"])
            if (record)
            else None
        )
        if record is None or route is None or config is None:
            return
        instances: dict[str, list[dict[str, Any]]] = record.body.get("_Instances") or {}
        variants = {v["VariantName"]: v for v in config.body["ProductionVariants"]}
        for change in desired:
            variant = next(v for v in route.variants if v.name == change["VariantName"])
            if "DesiredWeight" in change:
                variant.weight = change["DesiredWeight"]
            count = change.get("DesiredInstanceCount")
            handles = instances.setdefault(variant.name, [])
            spec = variants[variant.name]
            while count is not None and len(handles) < count:
                containers = self._containers(record, spec, extract=False)
                kind = lookup_instance_type(spec.get("InstanceType", "local"))
                client, handle = self._start_instance(
                    record, spec, len(handles) + _suffix(), containers, kind
                )
                self.wait_healthy(
                    handle, spec.get("ContainerStartupHealthCheckTimeoutInSeconds", 240)
                )
                handles.append(handle)
                variant.clients = [*variant.clients, client]
            while count is not None and len(handles) > count:
                handle = handles.pop()
                variant.clients = [c for c in variant.clients if c.port != handle["Port"]]
                self.stop_instance(handle, grace_seconds=10)

        def updated(body: dict[str, Any]) -> None:
            body["_Instances"] = instances
            body["EndpointStatus"] = "InService"
            for summary in body.get("ProductionVariants", []):
                live = next(v for v in route.variants if v.name == summary["VariantName"])
                summary.update(
                    DesiredWeight=live.weight,
                    CurrentWeight=live.weight,
                    CurrentInstanceCount=len(live.clients),
                    DesiredInstanceCount=len(live.clients),
                )

        self._update(name, updated)

    def _blue_green(self, name: str, config_name: str) -> None:
        record = self.ctx.store.get(ENDPOINT, name)
        if record is None:
            return
        old_instances: dict[str, list[dict[str, Any]]] = record.body.get("_Instances") or {}
        generation = uuid.uuid4().hex[:8]  # the new fleet's own directories, beside the old
        staged = dataclasses.replace(
            record,
            body={**record.body, "EndpointConfigName": config_name, "_Generation": generation},
        )
        try:
            route, instances = self._start_variants(staged)
        except DeployFailed as failure:
            reason = (
                f"Update to endpoint config {config_name} failed and was rolled back: {failure}"
            )

            def rolled_back(body: dict[str, Any]) -> None:
                body["EndpointStatus"] = "InService"
                body["FailureReason"] = reason[:1024]

            self._update(name, rolled_back)
            return
        config = self.ctx.store.get(ENDPOINT_CONFIG, config_name)
        self.routes[name.lower()] = route  # traffic moves only now, to a healthy fleet
        for handles in old_instances.values():
            for handle in handles:
                self.stop_instance(handle, grace_seconds=10)
        old_generation = record.body.get("_Generation", "g0")
        shutil.rmtree(self.ctx.endpoints_dir / name / old_generation, ignore_errors=True)

        def switched(body: dict[str, Any]) -> None:
            body.update(
                EndpointConfigName=config_name,
                EndpointStatus="InService",
                _Instances=instances,
                _Generation=generation,
            )
            body.pop("FailureReason", None)
            body["ProductionVariants"] = [
                {
                    "VariantName": v["VariantName"],
                    "CurrentWeight": v["InitialVariantWeight"],
                    "DesiredWeight": v["InitialVariantWeight"],
                    "CurrentInstanceCount": v["InitialInstanceCount"],
                    "DesiredInstanceCount": v["InitialInstanceCount"],
                    "VariantStatus": [{"Status": "InService"}],
                }
                for v in (config.body["ProductionVariants"] if config else [])
            ]

        self._update(name, switched)

    # --- restart and deletion ---------------------------------------------------------------

    def _reattach(self, record: Record) -> None:
        recorded: dict[str, list[dict[str, Any]]] = record.body.get("_Instances") or {}
        config = self.ctx.store.get(ENDPOINT_CONFIG, record.body["EndpointConfigName"])
        alive = bool(recorded) and all(
            self.ctx.executor.poll(process["Handle"]).state is State.RUNNING
            for handles in recorded.values()
            for h in handles
            for process in processes_of(h)
        )
        if not alive or config is None:
            for handles in recorded.values():
                for h in handles:
                    self.stop_instance(h, grace_seconds=5)
            self._deploy(record.name)
            return
        production = config.body["ProductionVariants"]
        shadows = {v["VariantName"]: v for v in config.body.get("ShadowProductionVariants") or []}
        weights = {v["VariantName"]: v.get("InitialVariantWeight", 1.0) for v in production}
        serverless = {v["VariantName"]: v.get("ServerlessConfig") for v in production}
        total = sum(weights.values()) or 1.0
        route = Route(capture=config.body.get("DataCaptureConfig"))
        for name, handles in recorded.items():
            clients = [self._client(h) for h in handles]
            if name in shadows:
                weight = shadows[name].get("InitialVariantWeight", 1.0)
                route.shadows.append((Variant(name, weight, clients), min(weight / total, 1.0)))
            else:
                live = Variant(
                    name, weights.get(name, 1.0), clients, serverless=serverless.get(name)
                )
                route.variants.append(live)
        self.routes[record.name.lower()] = route
        if record.body.get("EndpointStatus") != "InService":  # an update cut off by a restart

            def settled(body: dict[str, Any]) -> None:
                body["EndpointStatus"] = "InService"

            self._update(record.name, settled)
        log.info("re-attached to endpoint %s", record.name)

    def _undeploy(self, name: str) -> None:
        self.routes.pop(name.lower(), None)
        record = self.ctx.store.get(ENDPOINT, name)
        if record is not None:
            for handles in (record.body.get("_Instances") or {}).values():
                for h in handles:
                    self.stop_instance(h, grace_seconds=10)
            self.ctx.store.delete(ENDPOINT, name)
        shutil.rmtree(self.ctx.endpoints_dir / name, ignore_errors=True)


def variant_instance_type(variant: dict[str, Any]) -> Any:
    """A variant's instance type; a serverless variant's is its memory size, with vCPUs in
    proportion (one per 2 GB, as AWS gives serverless compute in proportion to memory)."""
    serverless = variant.get("ServerlessConfig")
    if serverless:
        memory = int(serverless.get("MemorySizeInMB", 2048))
        return InstanceType(f"serverless-{memory}", max(1, memory // 2048), memory)
    return lookup_instance_type(variant.get("InstanceType", "local"))


def _variant_dir(root: Path, record: Record, variant: dict[str, Any]) -> Path:
    generation = record.body.get("_Generation", "g0")
    return root / record.name / generation / variant["VariantName"]


def _suffix() -> int:
    """Distinct directory numbers for instances added later (their predecessors may remain)."""
    return int(time.time() * 1000) % 10**9
