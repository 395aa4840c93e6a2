"""The built-in algorithms by name, imported lazily (their libraries are optional extras)."""

from __future__ import annotations

import importlib

from salvia.algorithms.base import AlgorithmSpec
from salvia.compute.runtimes import RuntimeRegistry, RuntimeSpec

# name -> module defining SPEC, train() and the inference handlers
ALGORITHMS: dict[str, str] = {
    "xgboost": "salvia.algorithms.xgboost",
    "linear-learner": "salvia.algorithms.linear_learner",
    "factorization-machines": "salvia.algorithms.factorization_machines",
    "kmeans": "salvia.algorithms.kmeans",
    "pca": "salvia.algorithms.pca",
    "knn": "salvia.algorithms.knn",
    "randomcutforest": "salvia.algorithms.random_cut_forest",
    "lightgbm": "salvia.algorithms.lightgbm",
    "catboost": "salvia.algorithms.catboost",
}
# XGBoost's image is also a framework image (script mode); its algorithm mode is chosen per job.
_FRAMEWORK_REPOSITORIES = {"sagemaker-xgboost", "salvia/xgboost"}


def spec(name: str) -> AlgorithmSpec:
    module = importlib.import_module(ALGORITHMS[name])
    value: AlgorithmSpec = module.SPEC
    return value


def available() -> list[AlgorithmSpec]:
    """The algorithms whose modules exist in this build."""
    found = []
    for name in ALGORITHMS:
        try:
            found.append(spec(name))
        except ModuleNotFoundError as error:
            if error.name != ALGORITHMS[name]:
                raise
    return found


def for_runtime(runtime_name: str) -> AlgorithmSpec | None:
    """The algorithm a resolved runtime stands for (runtimes are named after algorithms)."""
    return spec(runtime_name) if runtime_name in ALGORITHMS else None


def register_runtimes(registry: RuntimeRegistry) -> None:
    """Make each algorithm's official image repositories and `salvia/<name>` resolvable."""
    for algorithm in available():
        runtime = RuntimeSpec(
            name=algorithm.name,
            module=algorithm.module,
            distribution=algorithm.module,
            extra=algorithm.extra,
            framework=False,
            training_module=algorithm.train,
        )
        for repository in (*algorithm.repositories, f"salvia/{algorithm.name}"):
            if repository not in _FRAMEWORK_REPOSITORIES:
                registry.register(repository, runtime)
