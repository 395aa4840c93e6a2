"""Trial components: one step of an ML workflow, with parameters, artifacts and logged metrics."""

from __future__ import annotations

from typing import Any

from salvia.errors import ResourceNotFound, ValidationException
from salvia.resources.common import (
    ResourceContext,
    create_record,
    epoch,
    list_page,
    list_query,
    name_from,
    tag_list,
)
from salvia.resources.experiments import IN_TRIAL, TRIAL_COMPONENT, Experiments
from salvia.resources.registry import operation
from salvia.resources.search import Document
from salvia.store.metadata import ListQuery, Record

_MAPS = ("Parameters", "InputArtifacts", "OutputArtifacts")


class TrialComponents:
    def __init__(self, ctx: ResourceContext, experiments: Experiments) -> None:
        self.ctx = ctx
        self.experiments = experiments

    def component(self, name_or_arn: str) -> Record:
        name = name_from(name_or_arn, TRIAL_COMPONENT)
        record = self.ctx.store.get(TRIAL_COMPONENT, name)
        if record is None:
            arn = self.ctx.arn(TRIAL_COMPONENT, name)
            raise ResourceNotFound(f"Trial component '{arn}' does not exist.")
        return record

    @operation("CreateTrialComponent")
    def create_trial_component(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["TrialComponentName"]
        status = request.get("Status")
        record = self.ctx.new_record(
            TRIAL_COMPONENT,
            name,
            {
                "TrialComponentName": name,
                "DisplayName": request.get("DisplayName", name),
                "Status": status,
                "StartTime": epoch(request.get("StartTime")),
                "EndTime": epoch(request.get("EndTime")),
                "MetadataProperties": request.get("MetadataProperties"),
                **{member: request.get(member, {}) for member in _MAPS},
            },
            arn_member="TrialComponentArn",
            status=(status or {}).get("PrimaryStatus"),
        )
        create_record(
            self.ctx, record, request.get("Tags"), f"Trial component '{record.arn}' already exists."
        )
        return {"TrialComponentArn": record.arn}

    def metric_summaries(self, record: Record) -> list[dict[str, Any]]:
        return [
            {
                "MetricName": summary.name,
                "SourceArn": record.arn,
                "TimeStamp": summary.last_timestamp,
                "Max": summary.maximum,
                "Min": summary.minimum,
                "Last": summary.last,
                "Count": summary.count,
                "Avg": summary.average,
                "StdDev": summary.std_dev,
            }
            for summary in self.ctx.store.summarize_metrics(record.arn)
        ]

    def parents(self, record: Record) -> list[dict[str, Any]]:
        parents = []
        for _, trial_arn in self.ctx.store.associated(IN_TRIAL, sources=[record.arn]):
            trial = self.ctx.store.get_by_arn(trial_arn)
            if trial is not None:
                parents.append(
                    {"TrialName": trial.name, "ExperimentName": trial.body.get("ExperimentName")}
                )
        return parents

    def document(self, record: Record) -> Document:
        members = {
            **record.body,
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
        }
        lazy = {
            "Metrics": lambda: self.metric_summaries(record),
            "Parents": lambda: self.parents(record),
            "Tags": lambda: tag_list(self.ctx, record.arn),
        }
        return Document(record, members, lazy)

    @operation("DescribeTrialComponent")
    def describe_trial_component(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.component(request["TrialComponentName"])
        return {
            **record.body,
            "CreationTime": record.creation_time,
            "LastModifiedTime": record.last_modified_time,
            "Metrics": self.metric_summaries(record),
        }

    @operation("ListTrialComponents")
    def list_trial_components(self, request: dict[str, Any]) -> dict[str, Any]:
        given = [m for m in ("ExperimentName", "TrialName", "SourceArn") if m in request]
        if len(given) > 1:
            raise ValidationException(
                f"Only one of ExperimentName, TrialName and SourceArn may be given; got {given}."
            )
        fixed: dict[str, Any] = {}
        # membership is a condition of the store's query, so a page reads one page of rows
        # however many components the trial or experiment has
        if "TrialName" in request:
            trial = self.experiments.trial(request["TrialName"])
            fixed["member_of"] = (IN_TRIAL, [trial.arn])
        elif "ExperimentName" in request:
            experiment = self.experiments.experiment(request["ExperimentName"])
            fixed["member_of"] = (IN_TRIAL, self._trial_arns(experiment.name_key))
        elif "SourceArn" in request:
            fixed["parent"] = request["SourceArn"]
        query = list_query(
            TRIAL_COMPONENT,
            request,
            created_after="CreatedAfter",
            created_before="CreatedBefore",
            **fixed,
        )
        return list_page(self.ctx, query, "TrialComponentSummaries", _summary)

    def _trial_arns(self, experiment_key: str) -> list[str]:
        arns: list[str] = []
        query = ListQuery(kind="experiment-trial", parent=experiment_key, limit=1000)
        while True:
            page = self.ctx.store.list_records(query)
            arns.extend(record.arn for record in page.records)
            if page.next_cursor is None:
                return arns
            query.after = page.next_cursor

    @operation("UpdateTrialComponent")
    def update_trial_component(self, request: dict[str, Any]) -> dict[str, Any]:
        for member in _MAPS:
            clash = set(request.get(member, {})) & set(request.get(f"{member}ToRemove", []))
            if clash:
                raise ValidationException(
                    f"{member} and {member}ToRemove both name {sorted(clash)}."
                )

        def change(record: Record) -> None:
            body = record.body
            for member in ("DisplayName", "Status"):
                if member in request:
                    body[member] = request[member]
            for member in ("StartTime", "EndTime"):
                if member in request:
                    body[member] = epoch(request[member])
            for member in _MAPS:
                values = dict(body.get(member) or {})
                values.update(request.get(member, {}))
                for key in request.get(f"{member}ToRemove", []):
                    values.pop(key, None)
                body[member] = values
            record.status = (body.get("Status") or {}).get("PrimaryStatus")

        record = self.component(request["TrialComponentName"])
        updated = self.ctx.store.update(TRIAL_COMPONENT, record.name, change, self.ctx.clock.now())
        if updated is None:
            raise ResourceNotFound(f"Trial component '{record.arn}' does not exist.")
        return {"TrialComponentArn": updated.arn}

    @operation("DeleteTrialComponent")
    def delete_trial_component(self, request: dict[str, Any]) -> dict[str, Any]:
        record = self.component(request["TrialComponentName"])
        if self.ctx.store.associated(IN_TRIAL, sources=[record.arn]):
            raise ValidationException(
                f"Trial component '{record.arn}' is associated with trials; "
                "disassociate it from all trials first."
            )
        if self.ctx.store.delete(TRIAL_COMPONENT, record.name) is None:
            raise ResourceNotFound(f"Trial component '{record.arn}' does not exist.")
        return {"TrialComponentArn": record.arn}

    @operation("AssociateTrialComponent")
    def associate_trial_component(self, request: dict[str, Any]) -> dict[str, Any]:
        component = self.component(request["TrialComponentName"])
        trial = self.experiments.trial(request["TrialName"])
        self.ctx.store.associate(component.arn, trial.arn, IN_TRIAL, self.ctx.clock.now())
        return {"TrialComponentArn": component.arn, "TrialArn": trial.arn}

    @operation("DisassociateTrialComponent")
    def disassociate_trial_component(self, request: dict[str, Any]) -> dict[str, Any]:
        component = self.component(request["TrialComponentName"])
        trial = self.experiments.trial(request["TrialName"])
        if not self.ctx.store.disassociate(component.arn, trial.arn, IN_TRIAL):
            raise ResourceNotFound(
                f"Trial component '{component.arn}' is not associated with trial '{trial.arn}'."
            )
        return {"TrialComponentArn": component.arn, "TrialArn": trial.arn}


def _summary(record: Record) -> dict[str, Any]:
    body = record.body
    return {
        "TrialComponentName": record.name,
        "TrialComponentArn": record.arn,
        "DisplayName": body.get("DisplayName"),
        "TrialComponentSource": body.get("Source"),
        "Status": body.get("Status"),
        "StartTime": body.get("StartTime"),
        "EndTime": body.get("EndTime"),
        "CreationTime": record.creation_time,
        "LastModifiedTime": record.last_modified_time,
    }
