"""Per-variant invocation metrics, named as SageMaker's CloudWatch metrics, exposed in the
Prometheus text format: Invocations, Invocation4XXErrors, Invocation5XXErrors, and
ModelLatency / OverheadLatency in microseconds (as sums and counts, so rates and means follow);
for multi-model variants also model cache hits, loads, unloads and the models loaded now."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class _Variant:
    invocations: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    model_latency_us: float = 0.0
    overhead_latency_us: float = 0.0
    timed: int = 0
    # multi-model endpoints (SageMaker's ModelCacheHit, LoadedModelCount, and loads/unloads)
    model_cache_hits: int = 0
    model_loads: int = 0
    model_unloads: int = 0
    # serverless variants: instances started for a request that found none
    cold_starts: int = 0
    model_setup_seconds: float = 0.0


class InvocationMetrics:
    """Thread-safe counters keyed by (endpoint, variant)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._variants: dict[tuple[str, str], _Variant] = defaultdict(_Variant)

    def record(
        self, endpoint: str, variant: str, status: int, model_s: float, total_s: float
    ) -> None:
        with self._lock:
            entry = self._variants[(endpoint, variant)]
            entry.invocations += 1
            if 400 <= status < 500:
                entry.errors_4xx += 1
            elif status >= 500:
                entry.errors_5xx += 1
            entry.model_latency_us += model_s * 1e6
            entry.overhead_latency_us += max(total_s - model_s, 0.0) * 1e6
            entry.timed += 1

    def model_event(self, endpoint: str, variant: str, event: str) -> None:
        """A multi-model instance's `hit`, `miss`, `load` or `unload` of a model."""
        with self._lock:
            entry = self._variants[(endpoint, variant)]
            if event == "hit":
                entry.model_cache_hits += 1
            elif event == "load":
                entry.model_loads += 1
            elif event == "unload":
                entry.model_unloads += 1

    def cold_start(self, endpoint: str, variant: str, setup_seconds: float) -> None:
        with self._lock:
            entry = self._variants[(endpoint, variant)]
            entry.cold_starts += 1
            entry.model_setup_seconds += setup_seconds

    def invocations(self, endpoint: str, variant: str) -> int:
        """One variant's running total of invocations (endpoint names compared case-blind)."""
        endpoint = endpoint.lower()
        with self._lock:
            return sum(
                entry.invocations
                for (name, name_variant), entry in self._variants.items()
                if name.lower() == endpoint and name_variant == variant
            )

    def prometheus(self) -> str:
        with self._lock:
            items = sorted(self._variants.items())
        families = [
            ("sagemaker_invocations_total", "counter", "Invocations", lambda v: v.invocations),
            (
                "sagemaker_invocation_4xx_errors_total",
                "counter",
                "Invocations the model answered with a 4xx",
                lambda v: v.errors_4xx,
            ),
            (
                "sagemaker_invocation_5xx_errors_total",
                "counter",
                "Invocations the model answered with a 5xx",
                lambda v: v.errors_5xx,
            ),
            (
                "sagemaker_model_latency_microseconds_sum",
                "counter",
                "Time spent in the model server",
                lambda v: v.model_latency_us,
            ),
            (
                "sagemaker_overhead_latency_microseconds_sum",
                "counter",
                "Time the gateway added",
                lambda v: v.overhead_latency_us,
            ),
            (
                "sagemaker_latency_samples_total",
                "counter",
                "Invocations timed for the latency sums",
                lambda v: v.timed,
            ),
        ]
        multi_model = [
            ("sagemaker_model_cache_hits_total", "counter", "Requests whose TargetModel was "
             "loaded already", lambda v: v.model_cache_hits),
            ("sagemaker_model_loads_total", "counter", "Models loaded", lambda v: v.model_loads),
            ("sagemaker_model_unloads_total", "counter", "Models unloaded (evicted)",
             lambda v: v.model_unloads),
            ("sagemaker_loaded_models", "gauge", "Models loaded now, over the variant's "
             "instances", lambda v: v.model_loads - v.model_unloads),
        ]  # fmt: skip
        serverless = [
            ("sagemaker_cold_starts_total", "counter", "Serverless instances started for a "
             "request that found none", lambda v: v.cold_starts),
            ("sagemaker_model_setup_seconds_sum", "counter", "Time those cold starts took "
             "(SageMaker's ModelSetupTime)", lambda v: v.model_setup_seconds),
        ]  # fmt: skip
        lines = []
        for name, kind, help_text, value in families + multi_model + serverless:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for (endpoint, variant), entry in items:
                if not entry.model_loads and any(name == m[0] for m in multi_model):
                    continue  # not a multi-model variant
                if not entry.cold_starts and any(name == m[0] for m in serverless):
                    continue  # not a serverless variant
                labels = f'endpoint="{_escape(endpoint)}",variant="{_escape(variant)}"'
                lines.append(f"{name}{{{labels}}} {value(entry)}")
        return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
