"""A tuning job's request, checked once and read as a plan: its training job definitions with
their search spaces and objectives, its limits and criteria, and how a trial's training job
request is made from a definition and the tuned values."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from salvia.errors import ValidationException
from salvia.tuning.optimizer import Definition
from salvia.tuning.space import SearchSpace

TUNING_TAG = "salvia:tuning-job"
# the members of a training job definition that a trial's CreateTrainingJob request carries over
_COPIED = (
    "RoleArn",
    "InputDataConfig",
    "OutputDataConfig",
    "ResourceConfig",
    "StoppingCondition",
    "VpcConfig",
    "EnableNetworkIsolation",
    "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining",
    "CheckpointConfig",
    "RetryStrategy",
    "Environment",
)


@dataclass(frozen=True)
class TrialDefinition:
    name: str  # DefinitionName; "" for a job's single TrainingJobDefinition
    body: dict[str, Any]
    space: SearchSpace
    objective_type: str  # Maximize | Minimize
    metric: str

    @property
    def maximize(self) -> bool:
        return self.objective_type == "Maximize"

    @property
    def builtin(self) -> bool:
        """A built-in algorithm (no training script): SageMaker hands it the objective's name."""
        return "sagemaker_program" not in (self.body.get("StaticHyperParameters") or {})


@dataclass(frozen=True)
class TuningPlan:
    strategy: str
    definitions: tuple[TrialDefinition, ...]
    max_jobs: int
    max_parallel: int
    max_runtime: int | None
    early_stopping: str
    seed: int | None
    hyperband: dict[str, Any] = field(default_factory=dict)
    target: float | None = None
    not_improving: int | None = None
    convergence: bool = False

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> TuningPlan:
        config = body["HyperParameterTuningJobConfig"]
        strategy = config["Strategy"]
        definitions = _definitions(body, config)
        limits = config.get("ResourceLimits") or {}
        parallel = int(limits.get("MaxParallelTrainingJobs") or 1)
        early_stopping = config.get("TrainingJobEarlyStoppingType") or "Off"
        hyperband = (config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
        if hyperband and strategy != "Hyperband":
            raise ValidationException(
                "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig is only "
                f"valid with the Hyperband strategy; the strategy is {strategy}."
            )
        if strategy == "Hyperband" and early_stopping != "Off":
            raise ValidationException(
                "HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType must be Off with the "
                "Hyperband strategy: Hyperband stops training jobs early by itself."
            )
        low, high = hyperband.get("MinResource"), hyperband.get("MaxResource")
        if low and high and low > high:
            raise ValidationException(
                "HyperbandStrategyConfig.MinResource must not exceed MaxResource."
            )
        max_jobs = limits.get("MaxNumberOfTrainingJobs")
        if strategy == "Grid":
            max_jobs = _grid_limit(definitions, max_jobs)
        elif max_jobs is None:
            raise ValidationException(
                "HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs is "
                f"required with the {strategy} strategy."
            )
        criteria = config.get("TuningJobCompletionCriteria") or {}
        not_improving = (criteria.get("BestObjectiveNotImproving") or {}).get(
            "MaxNumberOfTrainingJobsNotImproving"
        )
        convergence = (criteria.get("ConvergenceDetected") or {}).get("CompleteOnConvergence")
        return cls(
            strategy=strategy,
            definitions=definitions,
            max_jobs=int(max_jobs),
            max_parallel=parallel,
            max_runtime=limits.get("MaxRuntimeInSeconds"),
            early_stopping=early_stopping,
            seed=config.get("RandomSeed"),
            hyperband=dict(hyperband),
            target=criteria.get("TargetObjectiveMetricValue"),
            not_improving=not_improving,
            convergence=convergence == "Enabled",
        )

    def optimizer_definitions(self) -> list[Definition]:
        return [Definition(d.name, d.space, d.maximize) for d in self.definitions]

    def training_request(
        self,
        index: int,
        job_name: str,
        tuned: Mapping[str, str],
        tuning_arn: str,
        tags: list[dict[str, str]],
    ) -> dict[str, Any]:
        """The CreateTrainingJob request of one trial."""
        definition = self.definitions[index]
        body = copy.deepcopy(definition.body)
        algorithm = {
            key: value
            for key, value in (body.get("AlgorithmSpecification") or {}).items()
            if key in {"TrainingImage", "TrainingInputMode", "MetricDefinitions", "AlgorithmName"}
        }
        hyperparameters = {**(body.get("StaticHyperParameters") or {}), **tuned}
        if definition.builtin:
            hyperparameters["_tuning_objective_metric"] = definition.metric
        request: dict[str, Any] = {key: body[key] for key in _COPIED if body.get(key) is not None}
        resources = body.get("HyperParameterTuningResourceConfig")
        if "ResourceConfig" not in request and resources:
            request["ResourceConfig"] = {
                key: resources[key]
                for key in ("InstanceType", "InstanceCount", "VolumeSizeInGB")
                if key in resources
            }
        request.update(
            TrainingJobName=job_name,
            AlgorithmSpecification=algorithm,
            HyperParameters=hyperparameters,
            TuningJobArn=tuning_arn,
            Tags=[*tags, {"Key": TUNING_TAG, "Value": tuning_arn.rsplit("/", 1)[-1]}],
        )
        return request


def _definitions(body: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[TrialDefinition, ...]:
    single = body.get("TrainingJobDefinition")
    several = body.get("TrainingJobDefinitions")
    if bool(single) == bool(several):
        raise ValidationException(
            "Exactly one of TrainingJobDefinition and TrainingJobDefinitions must be given."
        )
    if single:
        objective = config.get("HyperParameterTuningJobObjective")
        if not objective:
            raise ValidationException(
                "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective is required "
                "with TrainingJobDefinition."
            )
        space = SearchSpace.parse(
            config.get("ParameterRanges"), "HyperParameterTuningJobConfig.ParameterRanges"
        )
        return (_definition(single, "", space, objective, "TrainingJobDefinition"),)
    for member in ("HyperParameterTuningJobObjective", "ParameterRanges"):
        if config.get(member):
            raise ValidationException(
                f"HyperParameterTuningJobConfig.{member} must not be given with "
                "TrainingJobDefinitions: each definition has its own."
            )
    found: list[TrialDefinition] = []
    for index, item in enumerate(several or []):
        where = f"TrainingJobDefinitions.{index + 1}"
        name = item.get("DefinitionName")
        if not name:
            raise ValidationException(
                f"{where}.DefinitionName is required with several definitions."
            )
        if name in {d.name for d in found}:
            raise ValidationException(f"{where}.DefinitionName '{name}' is not unique.")
        objective = item.get("TuningObjective")
        if not objective:
            raise ValidationException(f"{where}.TuningObjective is required.")
        space = SearchSpace.parse(
            item.get("HyperParameterRanges"), f"{where}.HyperParameterRanges", f"{name}:"
        )
        found.append(_definition(item, name, space, objective, where))
    return tuple(found)


def _definition(
    body: Mapping[str, Any], name: str, space: SearchSpace, objective: Mapping[str, Any], where: str
) -> TrialDefinition:
    static = body.get("StaticHyperParameters") or {}
    both = sorted(space.names & set(static))
    if both:
        raise ValidationException(
            f"{where}.StaticHyperParameters: {', '.join(both)} cannot be both static and tuned."
        )
    return TrialDefinition(
        name=name,
        body=dict(body),
        space=space,
        objective_type=objective["Type"],
        metric=objective["MetricName"],
    )


def _grid_limit(definitions: tuple[TrialDefinition, ...], given: int | None) -> int:
    if len(definitions) > 1:
        raise ValidationException(
            "The Grid strategy takes a single TrainingJobDefinition on Salvia."
        )
    space = definitions[0].space
    other = [r.name for r in space.ranges if r.kind != "Categorical"]
    if other or not space.ranges:
        raise ValidationException(
            "The Grid strategy needs categorical ranges only (CategoricalParameterRanges); "
            f"got {', '.join(other) or 'none'}."
        )
    size = space.grid_size()
    if given is not None and given < size:
        return int(given)
    return size
