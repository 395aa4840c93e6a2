"""Executors chosen by a short name in the settings, imported lazily (Ray is an optional extra)."""

from __future__ import annotations

import importlib

from salvia.compute.executor import Executor
from salvia.config import Settings

EXECUTORS = {
    "local": "salvia.compute.local:LocalProcessExecutor",
    "ray": "salvia.compute.ray_executor:RayExecutor",
}


def executor_from_settings(settings: Settings) -> Executor:
    path = EXECUTORS.get(settings.executor)
    if path is None:
        raise ValueError(f"executor must be one of {sorted(EXECUTORS)}, got {settings.executor!r}")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RuntimeError(
            f"the {settings.executor!r} executor needs its extra: "
            f"pip install 'salvia[{settings.executor}]' ({error})"
        ) from error
    cls = getattr(module, class_name)
    state_dir = settings.runtime_dir / "executor"
    if settings.executor == "ray":
        return cls(state_dir, address=settings.ray_address or None)
    return cls(state_dir)
