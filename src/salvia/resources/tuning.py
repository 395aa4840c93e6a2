"""Hyperparameter tuning jobs: Create/Describe/List/StopHyperParameterTuningJob and
ListTrainingJobsForHyperParameterTuningJob.

A request is checked once here (ranges, objective, limits, and each definition as the
CreateTrainingJob request its trials will make); the tuning engine runs the job. Trials are
ordinary training jobs carrying `TuningJobArn` and the tuning job's tags.
"""

from __future__ import annotations

import base64
import binascii
import copy
from typing import Any

import orjson

from salvia.errors import AlreadyExists, ResourceInUse, ResourceNotFound, ValidationException
from salvia.resources.common import ResourceContext, list_page, list_query, name_from, tag_pairs
from salvia.resources.registry import operation
from salvia.resources.training import TrainingJobs
from salvia.store.metadata import Record
from salvia.tuning import KIND, TRAINING_KIND, TuningEngine, TuningPlan, trial_summary
from salvia.tuning.optimizer import DEFINITION_PARAM, signed
from salvia.tuning.space import Range

_SUMMARY = (
    "HyperParameterTuningJobName",
    "HyperParameterTuningJobArn",
    "HyperParameterTuningJobStatus",
    "HyperParameterTuningEndTime",
    "TrainingJobStatusCounters",
    "ObjectiveStatusCounters",
)
_TRIAL_SORT = ("Name", "CreationTime", "Status", "FinalObjectiveMetricValue")


class HyperParameterTuning:
    def __init__(
        self, ctx: ResourceContext, engine: TuningEngine, training_jobs: TrainingJobs
    ) -> None:
        self.ctx = ctx
        self.engine = engine
        self.training_jobs = training_jobs

    def job(self, name: str) -> Record:
        record = self.ctx.store.get(KIND, name_from(name, KIND))
        if record is None:
            raise ResourceNotFound(f"Amazon SageMaker can't find a tuning job with name {name}")
        return record

    @operation("CreateHyperParameterTuningJob")
    def create_hyper_parameter_tuning_job(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["HyperParameterTuningJobName"]
        if request.get("Autotune"):
            raise ValidationException("Autotune is not supported by Salvia yet.")
        plan = TuningPlan.parse(request)
        self._check_definitions(plan)
        tag_pairs(request.get("Tags"))
        body = {
            key: value
            for key, value in request.items()
            if key not in {"Tags", "HyperParameterTuningJobName"} and value is not None
        }
        body.update(
            HyperParameterTuningJobName=name,
            HyperParameterTuningJobStatus="InProgress",
            TrainingJobStatusCounters={
                "Completed": 0,
                "InProgress": 0,
                "RetryableError": 0,
                "NonRetryableError": 0,
                "Stopped": 0,
            },
            ObjectiveStatusCounters={"Succeeded": 0, "Pending": 0, "Failed": 0},
            _Trials=[],
        )
        warm = request.get("WarmStartConfig")
        if warm:
            self._warm_start(plan, warm, body)
        record = self.ctx.new_record(
            KIND, name, body, arn_member="HyperParameterTuningJobArn", status="InProgress"
        )
        record.body["_CreationTime"] = record.creation_time
        try:
            self.ctx.store.create(record, tag_pairs(request.get("Tags")))
        except AlreadyExists:
            raise ResourceInUse(f"Hyperparameter tuning job '{name}' already exists.") from None
        self.engine.submit(name)
        return {"HyperParameterTuningJobArn": record.arn}

    def _check_definitions(self, plan: TuningPlan) -> None:
        for index, definition in enumerate(plan.definitions):
            where = (
                f"TrainingJobDefinitions.{index + 1}"
                if definition.name
                else "TrainingJobDefinition"
            )
            sample = {item.name: _sample(item) for item in definition.space.ranges}
            request = plan.training_request(index, "tuning-check", sample, "arn:x/check", [])
            checked = copy.deepcopy(request)
            try:
                self.training_jobs.validate(checked)
            except ValidationException as error:
                raise ValidationException(f"{where}: {error.message}") from None
            known = [
                d["Name"] for d in checked["AlgorithmSpecification"].get("MetricDefinitions", [])
            ]
            if definition.metric not in known:
                raise ValidationException(
                    f"{where}: the objective metric '{definition.metric}' is neither one of the "
                    "algorithm's predefined metrics nor in AlgorithmSpecification."
                    f"MetricDefinitions (known: {', '.join(known) or 'none'})."
                )

    def _warm_start(self, plan: TuningPlan, warm: dict[str, Any], body: dict[str, Any]) -> None:
        kind = warm["WarmStartType"]
        priors: list[dict[str, Any]] = []
        parent_best: dict[str, Any] | None = None
        for index, parent in enumerate(warm["ParentHyperParameterTuningJobs"]):
            parent_name = parent.get("HyperParameterTuningJobName") or ""
            record = self.ctx.store.get(KIND, parent_name)
            if record is None:
                raise ResourceNotFound(
                    f"WarmStartConfig.ParentHyperParameterTuningJobs.{index + 1}: tuning job "
                    f"'{parent_name}' does not exist."
                )
            parent_plan = TuningPlan.parse(record.body)
            if kind == "IdenticalDataAndAlgorithm":
                mine = [
                    d.body["AlgorithmSpecification"].get("TrainingImage") for d in plan.definitions
                ]
                theirs = [
                    d.body["AlgorithmSpecification"].get("TrainingImage")
                    for d in parent_plan.definitions
                ]
                if sorted(mine) != sorted(theirs):
                    raise ValidationException(
                        "WarmStartConfig.WarmStartType IdenticalDataAndAlgorithm needs the "
                        f"parent's training images; '{parent_name}' used {theirs}, this job {mine}."
                    )
                best = record.body.get("OverallBestTrainingJob") or record.body.get(
                    "BestTrainingJob"
                )
                if best and (parent_best is None or _better(best, parent_best)):
                    parent_best = best
            for trial in record.body.get("_Trials") or []:
                if trial.get("Objective") is None:
                    continue
                source = parent_plan.definitions[trial["Definition"]]
                prior = _prior(plan, source.name, trial)
                if prior is not None:
                    priors.append(prior)
        body["_Priors"] = priors
        if parent_best is not None:
            body["_ParentBest"] = parent_best

    @staticmethod
    def _describe(record: Record) -> dict[str, Any]:
        return {
            **{k: v for k, v in record.body.items() if not k.startswith("_")},
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }

    @operation("DescribeHyperParameterTuningJob")
    def describe_hyper_parameter_tuning_job(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self.job(request["HyperParameterTuningJobName"]))

    @operation("ListHyperParameterTuningJobs")
    def list_hyper_parameter_tuning_jobs(self, request: dict[str, Any]) -> dict[str, Any]:
        query = list_query(KIND, request)
        return list_page(self.ctx, query, "HyperParameterTuningJobSummaries", _summary)

    @operation("StopHyperParameterTuningJob")
    def stop_hyper_parameter_tuning_job(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.job(request["HyperParameterTuningJobName"])
        status = record.body["HyperParameterTuningJobStatus"]
        if status == "Stopping":
            return {}
        if status != "InProgress":
            raise ValidationException(
                f"The hyperparameter tuning job {record.name} is not in InProgress state: it is "
                f"{status}."
            )

        def change(job: Record) -> None:
            if job.body["HyperParameterTuningJobStatus"] == "InProgress":
                job.body["HyperParameterTuningJobStatus"] = "Stopping"
                job.status = "Stopping"

        self.ctx.store.update(KIND, record.name, change, self.ctx.clock.now())
        self.engine.wake()
        return {}

    @operation("ListTrainingJobsForHyperParameterTuningJob")
    def list_training_jobs_for_hyper_parameter_tuning_job(
        self, request: dict[str, Any]
    ) -> dict[str, Any]:
        record = self.job(request["HyperParameterTuningJobName"])
        plan = TuningPlan.parse(record.body)
        summaries = []
        for trial in record.body.get("_Trials") or []:
            current = dict(trial)
            if not trial.get("Final"):
                job = self.ctx.store.get(TRAINING_KIND, trial["Name"])
                if job is not None:
                    current.update(Status=job.body["TrainingJobStatus"], TrainingJobArn=job.arn)
                    if job.body.get("TrainingStartTime"):
                        current["TrainingStartTime"] = job.body["TrainingStartTime"]
            summaries.append(trial_summary(plan, current, record.name))
        status = request.get("StatusEquals")
        if status:
            summaries = [s for s in summaries if s["TrainingJobStatus"] == status]
        summaries = _sorted(summaries, request.get("SortBy", "Name"), request.get("SortOrder"))
        start = _offset(request.get("NextToken"), record.name)
        size = request.get("MaxResults", 10)
        response: dict[str, Any] = {"TrainingJobSummaries": summaries[start : start + size]}
        if start + size < len(summaries):
            response["NextToken"] = _token(start + size, record.name)
        return response


def _sample(item: Range) -> str:
    if item.kind == "Categorical":
        return item.values[0]
    return item.hyperparameter(item.low if item.scaling != "ReverseLogarithmic" else 1 - item.low)


def _prior(plan: TuningPlan, source: str, trial: dict[str, Any]) -> dict[str, Any] | None:
    """A parent's trial in this job's terms (its values mapped into this job's ranges)."""
    for index, definition in enumerate(plan.definitions):
        if len(plan.definitions) > 1 and definition.name != source:
            continue
        params: dict[str, Any] = {}
        for item in definition.space.ranges:
            text = (trial.get("TunedHyperParameters") or {}).get(item.name)
            value = None if text is None else item.sampled(text)
            if value is not None:
                params[item.key] = value
        if not params:
            return None
        if len(plan.definitions) > 1:
            params[DEFINITION_PARAM] = definition.name
        value = signed(float(trial["Objective"]), definition.maximize)
        return {"Params": params, "Value": value, "Definition": index}
    return None


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ma = a.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    mb = b.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    if "Value" not in ma:
        return False
    if "Value" not in mb:
        return True
    if ma.get("Type") == "Minimize":
        return float(ma["Value"]) < float(mb["Value"])
    return float(ma["Value"]) > float(mb["Value"])


def _sorted(
    summaries: list[dict[str, Any]], sort_by: str, order: str | None
) -> list[dict[str, Any]]:
    if sort_by not in _TRIAL_SORT:
        raise ValidationException(f"SortBy '{sort_by}' is not one of {', '.join(_TRIAL_SORT)}.")
    descending = order == "Descending"
    if sort_by == "FinalObjectiveMetricValue":
        scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
        rest = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" not in s]
        scored.sort(
            key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
            reverse=descending,
        )
        return scored + rest
    member = {"Name": "TrainingJobName", "Status": "TrainingJobStatus"}.get(sort_by, sort_by)
    return sorted(
        summaries, key=lambda s: (s.get(member) or 0, s["TrainingJobName"]), reverse=descending
    )


def _token(offset: int, name: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"o": offset, "n": name.lower()})).decode()


def _offset(token: str | None, name: str) -> int:
    if not token:
        return 0
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        data = None
    if (
        not isinstance(data, dict)
        or data.get("n") != name.lower()
        or not isinstance(data.get("o"), int)
    ):
        raise ValidationException("The NextToken is invalid or does not match this request.")
    return int(data["o"])


def _summary(record: Record) -> dict[str, Any]:
    summary = {key: record.body.get(key) for key in _SUMMARY if record.body.get(key) is not None}
    config = record.body["HyperParameterTuningJobConfig"]
    summary.update(
        Strategy=config["Strategy"],
        ResourceLimits=config["ResourceLimits"],
        CreationTime=record.creation_time,
        LastModifiedTime=record.last_modified_time,
    )
    return summary
