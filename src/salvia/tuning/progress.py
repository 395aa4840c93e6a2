"""What a tuning job's trials add up to: status counters, the best training job, and whether a
completion criterion or limit has been reached."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from salvia.tuning.plan import TuningPlan

# convergence: at least this many completed trials, and the best improved by less than
# CONVERGENCE_TOLERANCE (relative) over the last third of them
CONVERGENCE_MIN_TRIALS = 10
CONVERGENCE_TOLERANCE = 1e-4


def trial_summary(plan: TuningPlan, trial: Mapping[str, Any], tuning_name: str) -> dict[str, Any]:
    """A stored trial as SageMaker's `HyperParameterTrainingJobSummary`."""
    definition = plan.definitions[trial["Definition"]]
    summary: dict[str, Any] = {
        "TrainingJobName": trial["Name"],
        "TrainingJobArn": trial.get("TrainingJobArn", ""),
        "TuningJobName": tuning_name,
        "CreationTime": trial.get("CreationTime"),
        "TrainingJobStatus": trial.get("Status", "InProgress"),
        "TunedHyperParameters": trial.get("TunedHyperParameters", {}),
    }
    if definition.name:
        summary["TrainingJobDefinitionName"] = definition.name
    for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
        if trial.get(key) is not None:
            summary[key] = trial[key]
    if not trial.get("Final"):
        summary["ObjectiveStatus"] = "Pending"
    elif trial.get("Objective") is None:
        summary["ObjectiveStatus"] = "Failed"
    else:
        summary["ObjectiveStatus"] = "Succeeded"
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": definition.objective_type,
            "MetricName": definition.metric,
            "Value": trial["Objective"],
        }
    return summary


class Progress:
    def __init__(
        self,
        plan: TuningPlan,
        trials: Sequence[Mapping[str, Any]],
        body: Mapping[str, Any],
        now: float,
    ) -> None:
        self.plan = plan
        self.trials = trials
        self.body = body
        self.now = now

    def _signed(self, trial: Mapping[str, Any]) -> float:
        maximize = self.plan.definitions[trial["Definition"]].maximize
        value = float(trial["Objective"])
        return value if maximize else -value

    def _scored(self, status: str = "Completed") -> list[Mapping[str, Any]]:
        return [
            t
            for t in self.trials
            if t.get("Final") and t.get("Objective") is not None and t.get("Status") == status
        ]

    def best(self) -> Mapping[str, Any] | None:
        scored = self._scored() or self._scored("Stopped")
        return max(scored, key=self._signed) if scored else None

    def not_improving(self) -> int:
        """Trials finished since the best one finished."""
        ended = sorted(self._scored(), key=lambda t: t.get("TrainingEndTime") or 0)
        best = self.best()
        if best is None or best not in ended:
            return len(ended)
        return len(ended) - 1 - ended.index(best)

    def converged(self) -> bool:
        ended = sorted(self._scored(), key=lambda t: t.get("TrainingEndTime") or 0)
        if len(ended) < CONVERGENCE_MIN_TRIALS:
            return False
        recent = max(len(ended) // 3, 3)
        before = max(self._signed(t) for t in ended[:-recent])
        after = max(self._signed(t) for t in ended)
        return after - before <= CONVERGENCE_TOLERANCE * max(abs(before), 1e-12)

    def ending_reason(self, status: str) -> str | None:
        """Why the job stops starting trials now, or None."""
        if status == "Stopping":
            return "Stopped"
        created = float(self.body.get("_CreationTime") or self.now)
        if self.plan.max_runtime and self.now - created > self.plan.max_runtime:
            return "MaxRuntimeInSeconds"
        best = self.best()
        if self.plan.target is not None and best is not None:
            maximize = self.plan.definitions[best["Definition"]].maximize
            value = float(best["Objective"])
            if (value >= self.plan.target) if maximize else (value <= self.plan.target):
                return "TargetObjectiveMetricValue"
        if self.plan.not_improving and self.not_improving() >= self.plan.not_improving:
            return "BestObjectiveNotImproving"
        if self.plan.convergence and self.converged():
            return "ConvergenceDetected"
        return None

    def summarize(self, body: dict[str, Any]) -> None:
        """Write the counters, best jobs and consumed resources into the job's description."""
        statuses = [t.get("Status", "InProgress") for t in self.trials if t.get("Final")]
        body["TrainingJobStatusCounters"] = {
            "Completed": statuses.count("Completed"),
            "InProgress": sum(1 for t in self.trials if not t.get("Final")),
            "RetryableError": 0,
            "NonRetryableError": statuses.count("Failed"),
            "Stopped": sum(
                1 for t in self.trials if t.get("Final") and t.get("Status") == "Stopped"
            ),
        }
        finals = [t for t in self.trials if t.get("Final")]
        succeeded = sum(1 for t in finals if t.get("Objective") is not None)
        body["ObjectiveStatusCounters"] = {
            "Succeeded": succeeded,
            "Pending": len(self.trials) - len(finals),
            "Failed": len(finals) - succeeded,
        }
        name = body["HyperParameterTuningJobName"]
        best = self.best()
        if best is not None:
            body["BestTrainingJob"] = trial_summary(self.plan, best, name)
        overall = body.get("BestTrainingJob")
        parent = body.get("_ParentBest")
        if parent is not None and (overall is None or _better(parent, overall)):
            overall = parent
        if overall is not None and body.get("WarmStartConfig"):
            body["OverallBestTrainingJob"] = overall
        created = float(body.get("_CreationTime") or self.now)
        body["ConsumedResources"] = {"RuntimeInSeconds": int(self.now - created)}
        if self.plan.not_improving:
            body["TuningJobCompletionDetails"] = {
                **(body.get("TuningJobCompletionDetails") or {}),
                "NumberOfTrainingJobsObjectiveNotImproving": self.not_improving(),
            }
        if self.plan.convergence and self.converged():
            details = body.setdefault("TuningJobCompletionDetails", {})
            details.setdefault("ConvergenceDetectedTime", self.now)

    def final_status(self, body: Mapping[str, Any], ending: str | None) -> dict[str, Any]:
        if ending == "Stopped":
            return {"HyperParameterTuningJobStatus": "Stopped"}
        finals = [t for t in self.trials if t.get("Final")]
        if finals and not any(t.get("Objective") is not None for t in finals):
            reasons = [t["FailureReason"] for t in finals if t.get("FailureReason")]
            detail = f" The first failure: {reasons[0]}" if reasons else ""
            return {
                "HyperParameterTuningJobStatus": "Failed",
                "FailureReason": (
                    "No training job reported the objective metric "
                    f"'{self.plan.definitions[0].metric}'.{detail}"
                )[:1024],
            }
        return {"HyperParameterTuningJobStatus": "Completed"}


def _better(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    ma, mb = (
        a.get("FinalHyperParameterTuningJobObjectiveMetric"),
        b.get("FinalHyperParameterTuningJobObjectiveMetric"),
    )
    if not ma:
        return False
    if not mb:
        return True
    if ma.get("Type") == "Minimize":
        return float(ma["Value"]) < float(mb["Value"])
    return float(ma["Value"]) > float(mb["Value"])
