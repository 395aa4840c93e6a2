"""The endpoint autoscaler: Application Auto Scaling's target tracking, acting for real.

Scalable targets, scaling policies and scaling activities are records of the metadata store (the
kinds below). `resources/autoscaling.py` writes targets and policies from the API; this loop reads
them and writes activities. Every `period` seconds it measures each registered variant's
invocations per instance per minute over the last `window` from the gateway's counters, computes
the instance count that target tracking asks for, rescales the variant through the
`EndpointEngine`, and records the activity that `DescribeScalingActivities` reads.

A scaling in progress is written to its target's record (`_Scaling`), and cooldowns are measured
from the stored completion times, so a restarted server settles what its predecessor started.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from salvia.clock import Clock
from salvia.config import Settings
from salvia.serving.engine import ENDPOINT, ENDPOINT_CONFIG, EndpointEngine
from salvia.serving.metrics import InvocationMetrics
from salvia.store.metadata import ListQuery, MetadataStore, Record

log = logging.getLogger(__name__)

TARGET = "scalable-target"
POLICY = "scaling-policy"
ACTIVITY = "scaling-activity"
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
RESOURCE_ID = re.compile(r"endpoint/([^/]+)/variant/([^/]+)")
# AWS's low alarm sits at 90% of the target: a fleet shrinks only when clearly over-provisioned
SCALE_IN_MARGIN = 0.9
DEFAULT_COOLDOWN = 300  # seconds, SageMaker variants' default for both directions
MAX_WINDOW = 60.0  # the metric's period on AWS: one minute of invocations


def parse_resource_id(resource_id: str) -> tuple[str, str] | None:
    """(endpoint, variant) of `endpoint/<endpoint>/variant/<variant>`, else None."""
    match = RESOURCE_ID.fullmatch(resource_id)
    return (match.group(1), match.group(2)) if match else None


def target_key(resource_id: str) -> str:
    """How records refer to a target: endpoint names are case-insensitive, so the whole id is."""
    return resource_id.lower()


@dataclass(frozen=True)
class TargetTracking:
    """One target-tracking policy, as the loop needs it."""

    name: str
    target_value: float
    scale_out_cooldown: float = DEFAULT_COOLDOWN
    scale_in_cooldown: float = DEFAULT_COOLDOWN
    disable_scale_in: bool = False

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> TargetTracking:
        config = body["TargetTrackingScalingPolicyConfiguration"]
        return cls(
            name=body["PolicyName"],
            target_value=float(config["TargetValue"]),
            scale_out_cooldown=config.get("ScaleOutCooldown", DEFAULT_COOLDOWN),
            scale_in_cooldown=config.get("ScaleInCooldown", DEFAULT_COOLDOWN),
            disable_scale_in=bool(config.get("DisableScaleIn", False)),
        )


@dataclass(frozen=True)
class Decision:
    desired: int
    cause: str


def desired_count(current: int, metric: float, target: float, *, scale_in: bool = True) -> int:
    """Target tracking's count before bounds and cooldowns: the smallest fleet that brings the
    per-instance `metric` down to `target` (ceil(current * metric / target)). It shrinks only
    when the metric is clearly below the target, and never when `scale_in` is off."""
    if current < 1:
        return current
    # the tolerance keeps float noise (e.g. 3 * 70 / 70) from adding an instance
    needed = max(math.ceil(current * metric / target - 1e-9), 0)
    if needed < current and (not scale_in or metric >= SCALE_IN_MARGIN * target):
        return current
    return needed


def decide(
    current: int,
    minimum: int,
    maximum: int,
    policies: Sequence[TargetTracking],
    metric: float | None,
    now: float,
    last_scale_out: float | None = None,
    last_scale_in: float | None = None,
    suspended: dict[str, bool] | None = None,
) -> Decision | None:
    """What one pass does for one variant: None, or the count to set and why.

    Bounds come first (a fleet outside [min, max] is brought inside at once). Then, with a
    measured metric, the policy asking for the most instances wins, as AWS combines several
    target-tracking policies; a scale-out waits out ScaleOutCooldown since the last scale-out, a
    scale-in ScaleInCooldown since the last scale-in.
    """
    suspended = suspended or {}
    if current < minimum:
        return Decision(minimum, f"minimum capacity was set to {minimum}")
    if current > maximum:
        return Decision(maximum, f"maximum capacity was set to {maximum}")
    if metric is None or not policies:
        return None
    wanted = [
        (desired_count(current, metric, p.target_value, scale_in=not p.disable_scale_in), p)
        for p in policies
    ]
    desired, policy = max(wanted, key=lambda pair: pair[0])
    desired = min(max(desired, minimum), maximum)
    if desired > current:
        if suspended.get("DynamicScalingOutSuspended"):
            return None
        if last_scale_out is not None and now - last_scale_out < policy.scale_out_cooldown:
            return None
    elif desired < current:
        if suspended.get("DynamicScalingInSuspended"):
            return None
        if last_scale_in is not None and now - last_scale_in < policy.scale_in_cooldown:
            return None
    else:
        return None
    return Decision(
        desired,
        f"target tracking policy {policy.name}: {metric:.4g} invocations per instance per "
        f"minute against a target of {policy.target_value:g}",
    )


def records(store: MetadataStore, kind: str, parent: str | None = None) -> Iterator[Record]:
    """Every record of a kind (oldest first), page by page."""
    query = ListQuery(kind=kind, parent=parent, descending=False, limit=500)
    while True:
        page = store.list_records(query)
        yield from page.records
        if page.next_cursor is None:
            return
        query.after = page.next_cursor


class Autoscaler:
    """One daemon thread that acts on target-tracking policies every `period` seconds.

    Only its own thread calls `tick` (tests may call it directly instead of `start`); the
    records it writes are updated through the store's row-locked `update`, so API calls that
    change a target meanwhile are never lost.
    """

    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        clock: Clock,
        engine: EndpointEngine,
        metrics: InvocationMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.engine = engine
        self.metrics = metrics
        self.period = settings.autoscaling_period
        # a minute, as AWS measures; shorter when the period is shortened (tests)
        self.window = min(MAX_WINDOW, 12 * self.period)
        self._history: dict[str, deque[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period + 10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.tick()

    def tick(self) -> None:
        for target in list(records(self.store, TARGET)):
            try:
                self._reconcile(target)
            except Exception:
                log.exception("autoscaling %s", target.name)

    # --- one target -----------------------------------------------------------------------

    def _reconcile(self, target: Record) -> None:
        parsed = parse_resource_id(target.body["ResourceId"])
        if parsed is None:
            return
        endpoint_name, variant_name = parsed
        endpoint = self.store.get(ENDPOINT, endpoint_name)
        scaling = target.body.get("_Scaling")
        if scaling:
            self._settle(target, endpoint, variant_name, scaling)
            return
        route = self.engine.routes.get(endpoint_name.lower())
        variant = (
            next((v for v in route.variants if v.name == variant_name), None) if route else None
        )
        if endpoint is None or endpoint.body.get("EndpointStatus") != "InService" or not variant:
            self._history.pop(target.name_key, None)
            return
        current = len(variant.clients)
        metric = self._measure(target.name_key, endpoint_name, variant_name, current)
        policies = [
            TargetTracking.from_body(policy.body)
            for policy in records(self.store, POLICY, parent=target.name_key)
            if policy.body.get("PolicyType") == "TargetTrackingScaling"
        ]
        decision = decide(
            current,
            target.body["MinCapacity"],
            target.body["MaxCapacity"],
            policies,
            metric,
            self.clock.now(),
            target.body.get("_LastScaleOut"),
            target.body.get("_LastScaleIn"),
            target.body.get("SuspendedState"),
        )
        if decision is not None:
            self._scale(target, endpoint, variant_name, current, decision)

    def _measure(self, key: str, endpoint: str, variant: str, current: int) -> float | None:
        """Invocations per instance per minute over the last window; None until the samples
        span a whole window (a fresh fleet is judged on a full window of its own)."""
        now = time.monotonic()
        history = self._history.setdefault(key, deque())
        history.append((now, self.metrics.invocations(endpoint, variant)))
        while len(history) > 1 and history[1][0] <= now - self.window:
            history.popleft()
        (start, first), (_, last) = history[0], history[-1]
        elapsed = now - start
        if current < 1 or elapsed < self.window * 0.9:
            return None
        return (last - first) / elapsed * 60.0 / current

    def _scale(
        self, target: Record, endpoint: Record, variant: str, current: int, decision: Decision
    ) -> None:
        now = self.clock.now()
        accepted = False

        def updating(record: Record) -> None:
            nonlocal accepted
            if record.body.get("EndpointStatus") != "InService":
                return  # someone else's update got there first; try again next pass
            for summary in record.body.get("ProductionVariants", []):
                if summary["VariantName"] == variant:
                    summary["DesiredInstanceCount"] = decision.desired
            record.body["EndpointStatus"] = record.status = "Updating"
            accepted = True

        self.store.update(ENDPOINT, endpoint.name, updating, now)
        if not accepted:
            return
        activity_id = str(uuid.uuid4())
        body = {
            "ActivityId": activity_id,
            "ServiceNamespace": NAMESPACE,
            "ResourceId": target.body["ResourceId"],
            "ScalableDimension": DIMENSION,
            "Description": f"Setting desired instance count to {decision.desired}.",
            "Cause": decision.cause,
            "StartTime": now,
            "StatusCode": "InProgress",
            "StatusMessage": f"Changing the instance count from {current} to {decision.desired}.",
        }
        self.store.create(
            Record(
                kind=ACTIVITY,
                name=activity_id,
                arn=f"arn:aws:application-autoscaling:{self.settings.region}:"
                f"{self.settings.account_id}:scaling-activity/{activity_id}",
                creation_time=now,
                last_modified_time=now,
                body=body,
                status="InProgress",
                parent=target.name_key,
            )
        )
        # each added instance may take its whole health-check timeout, one after another
        timeout = self._startup_timeout(endpoint, variant) * max(decision.desired - current, 1)
        scaling = {
            "ActivityId": activity_id,
            "Desired": decision.desired,
            "Direction": "out" if decision.desired > current else "in",
            "Deadline": now + timeout + 60,
        }

        def begin(record: Record) -> None:
            record.body["_Scaling"] = scaling

        self.store.update(TARGET, target.name, begin, now)
        log.info("autoscaling %s: %s", target.body["ResourceId"], body["Description"])
        self.engine.rescale(
            endpoint.name, [{"VariantName": variant, "DesiredInstanceCount": decision.desired}]
        )

    def _startup_timeout(self, endpoint: Record, variant: str) -> float:
        config = self.store.get(ENDPOINT_CONFIG, endpoint.body.get("EndpointConfigName", ""))
        for spec in config.body.get("ProductionVariants", []) if config else []:
            if spec["VariantName"] == variant:
                return float(spec.get("ContainerStartupHealthCheckTimeoutInSeconds", 240))
        return 240.0

    def _settle(
        self, target: Record, endpoint: Record | None, variant: str, scaling: dict[str, Any]
    ) -> None:
        """Close the activity of a scaling in progress once the endpoint is done with it."""
        now = self.clock.now()
        status = endpoint.body.get("EndpointStatus") if endpoint else None
        if status == "Updating" and now < scaling["Deadline"]:
            return
        desired = scaling["Desired"]
        count = next(
            (
                s.get("CurrentInstanceCount")
                for s in (endpoint.body.get("ProductionVariants", []) if endpoint else [])
                if s["VariantName"] == variant
            ),
            None,
        )
        if endpoint is None:
            code, message = "Failed", "The endpoint was deleted while it was being scaled."
        elif status == "Updating":
            code, message = "Failed", "The endpoint did not finish scaling in time."
        elif status == "InService" and count == desired:
            code = "Successful"
            message = (
                f"Successfully set desired instance count to {desired}. "
                "Change successfully fulfilled by sagemaker."
            )
        else:
            reason = endpoint.body.get("FailureReason", "")
            code = "Failed"
            message = f"The variant has {count} instances, not {desired}; the endpoint is {status}."
            message += f" {reason}" if reason else ""

        def finish(record: Record) -> None:
            record.body.update(StatusCode=code, StatusMessage=message[:1024], EndTime=now)
            record.status = code

        self.store.update(ACTIVITY, scaling["ActivityId"], finish, now)

        def settled(record: Record) -> None:
            record.body.pop("_Scaling", None)
            # cooldowns run from completion; a failed attempt waits too, so it is not hammered
            last = "_LastScaleOut" if scaling["Direction"] == "out" else "_LastScaleIn"
            record.body[last] = now

        self.store.update(TARGET, target.name, settled, now)
        self._history.pop(target.name_key, None)  # the new fleet is judged on its own window
        log.info("autoscaling %s: %s", target.body["ResourceId"], message)
