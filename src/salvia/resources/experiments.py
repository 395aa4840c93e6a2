"""Experiments and Trials: the grouping half of SageMaker Experiments.

A trial belongs to one experiment (its `parent`); trial components join trials through
associations (see `trial_components.py`). Deletion follows SageMaker: an experiment must have no
trials left, a trial no associated trial components.
"""

from __future__ import annotations

from typing import Any

from salvia.errors import ResourceNotFound, ValidationException
from salvia.resources.common import (
    ResourceContext,
    create_record,
    list_page,
    list_query,
    name_from,
    tag_list,
)
from salvia.resources.registry import operation
from salvia.resources.search import Document
from salvia.store.metadata import ListQuery, Record

EXPERIMENT = "experiment"
TRIAL = "experiment-trial"
TRIAL_COMPONENT = "experiment-trial-component"
# association kind linking a trial component (source) to a trial (destination)
IN_TRIAL = "TrialComponentInTrial"


def _describe_common(record: Record) -> dict[str, Any]:
    return {
        **record.body,
        "CreationTime": record.creation_time,
        "LastModifiedTime": record.last_modified_time,
    }


class Experiments:
    def __init__(self, ctx: ResourceContext) -> None:
        self.ctx = ctx

    # --- lookups shared with trial components ---------------------------------------------

    def experiment(self, name: str) -> Record:
        record = self.ctx.store.get(EXPERIMENT, name_from(name, EXPERIMENT))
        if record is None:
            arn = self.ctx.arn(EXPERIMENT, name_from(name, EXPERIMENT))
            raise ResourceNotFound(f"Experiment '{arn}' does not exist.")
        return record

    def trial(self, name: str) -> Record:
        record = self.ctx.store.get(TRIAL, name_from(name, TRIAL))
        if record is None:
            arn = self.ctx.arn(TRIAL, name_from(name, TRIAL))
            raise ResourceNotFound(f"Trial '{arn}' does not exist.")
        return record

    # --- search documents -------------------------------------------------------------------

    def experiment_document(self, record: Record) -> Document:
        return Document(
            record, _describe_common(record), {"Tags": lambda: tag_list(self.ctx, record.arn)}
        )

    def trial_document(self, record: Record) -> Document:
        def components() -> list[dict[str, Any]]:
            edges = self.ctx.store.associated(IN_TRIAL, destinations=[record.arn])
            summaries = []
            for source, _ in edges:
                component = self.ctx.store.get_by_arn(source)
                if component is not None:
                    summaries.append(
                        {
                            "TrialComponentName": component.name,
                            "TrialComponentArn": component.arn,
                            "TrialComponentSource": component.body.get("Source"),
                            "CreationTime": component.creation_time,
                        }
                    )
            return summaries

        lazy = {
            "Tags": lambda: tag_list(self.ctx, record.arn),
            "TrialComponentSummaries": components,
        }
        return Document(record, _describe_common(record), lazy)

    # --- experiments ------------------------------------------------------------------------

    @operation("CreateExperiment")
    def create_experiment(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["ExperimentName"]
        record = self.ctx.new_record(
            EXPERIMENT,
            name,
            {
                "ExperimentName": name,
                "DisplayName": request.get("DisplayName", name),
                "Description": request.get("Description"),
            },
            arn_member="ExperimentArn",
        )
        create_record(
            self.ctx, record, request.get("Tags"), f"Experiment '{record.arn}' already exists."
        )
        return {"ExperimentArn": record.arn}

    @operation("DescribeExperiment")
    def describe_experiment(self, request: dict[str, Any]) -> dict[str, Any]:
        return _describe_common(self.experiment(request["ExperimentName"]))

    @operation("ListExperiments")
    def list_experiments(self, request: dict[str, Any]) -> dict[str, Any]:
        query = list_query(
            EXPERIMENT, request, created_after="CreatedAfter", created_before="CreatedBefore"
        )
        return list_page(self.ctx, query, "ExperimentSummaries", _experiment_summary)

    @operation("UpdateExperiment")
    def update_experiment(self, request: dict[str, Any]) -> dict[str, Any]:
        def change(record: Record) -> None:
            for member in ("DisplayName", "Description"):
                if member in request:
                    record.body[member] = request[member]

        record = self.experiment(request["ExperimentName"])
        updated = self.ctx.store.update(EXPERIMENT, record.name, change, self.ctx.clock.now())
        if updated is None:
            raise ResourceNotFound(f"Experiment '{record.arn}' does not exist.")
        return {"ExperimentArn": updated.arn}

    @operation("DeleteExperiment")
    def delete_experiment(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.experiment(request["ExperimentName"])
        trials = self.ctx.store.list_records(ListQuery(kind=TRIAL, parent=record.name_key, limit=1))
        if trials.records:
            raise ValidationException(
                f"Experiment '{record.arn}' still has trials; delete its trials first."
            )
        if self.ctx.store.delete(EXPERIMENT, record.name) is None:
            raise ResourceNotFound(f"Experiment '{record.arn}' does not exist.")
        return {"ExperimentArn": record.arn}

    # --- trials -----------------------------------------------------------------------------

    @operation("CreateTrial")
    def create_trial(self, request: dict[str, Any]) -> dict[str, Any]:
        experiment = self.experiment(request["ExperimentName"])
        name = request["TrialName"]
        record = self.ctx.new_record(
            TRIAL,
            name,
            {
                "TrialName": name,
                "DisplayName": request.get("DisplayName", name),
                "ExperimentName": experiment.name,
                "MetadataProperties": request.get("MetadataProperties"),
            },
            arn_member="TrialArn",
            parent=experiment.name_key,
        )
        create_record(
            self.ctx, record, request.get("Tags"), f"Trial '{record.arn}' already exists."
        )
        return {"TrialArn": record.arn}

    @operation("DescribeTrial")
    def describe_trial(self, request: dict[str, Any]) -> dict[str, Any]:
        return _describe_common(self.trial(request["TrialName"]))

    @operation("ListTrials")
    def list_trials(self, request: dict[str, Any]) -> dict[str, Any]:
        fixed: dict[str, Any] = {}
        if "ExperimentName" in request:
            fixed["parent"] = self.experiment(request["ExperimentName"]).name_key
        if "TrialComponentName" in request:
            component = self.ctx.store.get(
                TRIAL_COMPONENT, name_from(request["TrialComponentName"], TRIAL_COMPONENT)
            )
            if component is None:
                raise ResourceNotFound(
                    f"Trial component '{request['TrialComponentName']}' does not exist."
                )
            edges = self.ctx.store.associated(IN_TRIAL, sources=[component.arn])
            fixed["arns"] = [trial_arn for _, trial_arn in edges]
        query = list_query(
            TRIAL, request, created_after="CreatedAfter", created_before="CreatedBefore", **fixed
        )
        return list_page(self.ctx, query, "TrialSummaries", _trial_summary)

    @operation("UpdateTrial")
    def update_trial(self, request: dict[str, Any]) -> dict[str, Any]:
        def change(record: Record) -> None:
            if "DisplayName" in request:
                record.body["DisplayName"] = request["DisplayName"]

        record = self.trial(request["TrialName"])
        updated = self.ctx.store.update(TRIAL, record.name, change, self.ctx.clock.now())
        if updated is None:
            raise ResourceNotFound(f"Trial '{record.arn}' does not exist.")
        return {"TrialArn": updated.arn}

    @operation("DeleteTrial")
    def delete_trial(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.trial(request["TrialName"])
        if self.ctx.store.associated(IN_TRIAL, destinations=[record.arn]):
            raise ValidationException(
                f"Trial '{record.arn}' still has trial components; "
                "disassociate or delete them first."
            )
        if self.ctx.store.delete(TRIAL, record.name) is None:
            raise ResourceNotFound(f"Trial '{record.arn}' does not exist.")
        return {"TrialArn": record.arn}


def _experiment_summary(record: Record) -> dict[str, Any]:
    return {
        "ExperimentArn": record.arn,
        "ExperimentName": record.name,
        "DisplayName": record.body.get("DisplayName"),
        "ExperimentSource": record.body.get("Source"),
        "CreationTime": record.creation_time,
        "LastModifiedTime": record.last_modified_time,
    }


def _trial_summary(record: Record) -> dict[str, Any]:
    return {
        "TrialArn": record.arn,
        "TrialName": record.name,
        "DisplayName": record.body.get("DisplayName"),
        "TrialSource": record.body.get("Source"),
        "CreationTime": record.creation_time,
        "LastModifiedTime": record.last_modified_time,
    }
