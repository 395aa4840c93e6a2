"""Lineage through boto3: what a training job, a registered model and an endpoint leave behind,
walked with QueryLineage both ways, and the lineage entities and associations made by hand."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.api.test_endpoints import ROLE
from tests.api.test_training import TRAIN_SCRIPT, iris_csv, job_request, wait
from tests.conftest import SalviaServer, unique


def error_code(call: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as excinfo:
        call()
    return excinfo.value.response["Error"]["Code"], excinfo.value.response["Error"]["Message"]


def test_lineage_from_the_data_set_to_the_endpoint_and_back(server: SalviaServer) -> None:
    pytest.importorskip("sklearn")
    sm, s3 = server.client(), server.client("s3")
    bucket = unique("lineage")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="iris/train/data.csv", Body=iris_csv("train"))
    s3.put_object(Bucket=bucket, Key="iris/validation/data.csv", Body=iris_csv("validation"))
    train_uri = f"s3://{bucket}/iris/train"
    name = unique("lin")
    request = job_request(
        server,
        bucket,
        name,
        TRAIN_SCRIPT,
        InputDataConfig=[
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{bucket}/iris/{channel}",
                    }
                },
            }
            for channel in ("train", "validation")
        ],
    )
    sm.create_training_job(**request)
    job = wait(sm, name)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    model_data = job["ModelArtifacts"]["S3ModelArtifacts"]

    group = unique("lin-group")
    sm.create_model_package_group(ModelPackageGroupName=group)
    package = sm.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [
                {
                    "Image": request["AlgorithmSpecification"]["TrainingImage"],
                    "ModelDataUrl": model_data,
                }
            ],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    sm.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"ModelPackageName": package}
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    endpoint_arn = sm.create_endpoint(EndpointName=name, EndpointConfigName=name)["EndpointArn"]

    # the endpoint's context, found by its source, is where a walk up starts
    contexts = sm.list_contexts(SourceUri=endpoint_arn)["ContextSummaries"]
    assert [c["ContextType"] for c in contexts] == ["Endpoint"]
    context_arn = contexts[0]["ContextArn"]

    up = sm.query_lineage(StartArns=[context_arn], Direction="Ascendants", IncludeEdges=True)
    by_type: dict[str, list[str]] = {}
    for vertex in up["Vertices"]:
        by_type.setdefault(vertex["Type"], []).append(vertex["Arn"])
    assert {
        "Endpoint",
        "ModelDeployment",
        "ModelPackage",
        "Model",
        "TrainingJob",
        "DataSet",
    } <= set(by_type)
    sources = {
        sm.describe_artifact(ArtifactArn=arn)["Source"]["SourceUri"] for arn in by_type["DataSet"]
    }
    assert train_uri in sources
    assert any(e["AssociationType"] == "Produced" for e in up["Edges"])

    only_data = sm.query_lineage(
        StartArns=[context_arn],
        Direction="Ascendants",
        Filters={"Types": ["DataSet"], "LineageTypes": ["Artifact"]},
    )
    assert {v["Type"] for v in only_data["Vertices"]} == {"DataSet"}
    shallow = sm.query_lineage(StartArns=[context_arn], Direction="Ascendants", MaxDepth=1)
    assert {v["Type"] for v in shallow["Vertices"]} == {"Endpoint", "ModelDeployment"}

    # and from the data set forward to the endpoint
    dataset = sm.list_artifacts(SourceUri=train_uri, ArtifactType="DataSet")["ArtifactSummaries"]
    assert len(dataset) == 1
    down = sm.query_lineage(
        StartArns=[dataset[0]["ArtifactArn"]], Direction="Descendants", IncludeEdges=False
    )
    assert context_arn in {v["Arn"] for v in down["Vertices"]}
    assert "Edges" not in down or down["Edges"] == []
    component = sm.describe_trial_component(TrialComponentName=f"{name}-aws-training-job")
    assert component["Source"]["SourceArn"] == job["TrainingJobArn"]
    associations = sm.list_associations(DestinationArn=component["TrialComponentArn"])
    assert {a["SourceType"] for a in associations["AssociationSummaries"]} == {"DataSet", "Image"}
    sm.delete_endpoint(EndpointName=name)


def test_entities_and_associations_by_hand(server: SalviaServer) -> None:
    sm = server.client()
    data = sm.create_artifact(
        ArtifactName="raw",
        Source={"SourceUri": f"s3://lake/{unique('raw')}.csv"},
        ArtifactType="DataSet",
        Properties={"owner": "data-team"},
    )["ArtifactArn"]
    assert ":artifact/" in data
    described = sm.describe_artifact(ArtifactArn=data)
    assert described["ArtifactName"] == "raw" and described["Properties"] == {"owner": "data-team"}
    action_name, context_name = unique("clean"), unique("project")
    action = sm.create_action(
        ActionName=action_name, Source={"SourceUri": "job://clean"}, ActionType="Processing"
    )["ActionArn"]
    context = sm.create_context(
        ContextName=context_name, Source={"SourceUri": "proj://x"}, ContextType="Project"
    )["ContextArn"]
    assert sm.describe_action(ActionName=action_name)["ActionType"] == "Processing"
    assert sm.describe_context(ContextName=context_name)["ContextType"] == "Project"
    sm.add_association(SourceArn=data, DestinationArn=action, AssociationType="ContributedTo")
    sm.add_association(SourceArn=action, DestinationArn=context)
    listed = sm.list_associations(SourceArn=data)["AssociationSummaries"]
    assert [(a["DestinationArn"], a["AssociationType"], a["DestinationType"]) for a in listed] == [
        (action, "ContributedTo", "Processing")
    ]
    both = sm.query_lineage(StartArns=[action], Direction="Both")
    assert {v["Arn"] for v in both["Vertices"]} == {data, action, context}
    assert {v["LineageType"] for v in both["Vertices"]} == {"Artifact", "Action", "Context"}
    assert len(both["Edges"]) == 2
    page = sm.query_lineage(StartArns=[action], Direction="Both", MaxResults=2)
    rest = sm.query_lineage(
        StartArns=[action], Direction="Both", MaxResults=2, NextToken=page["NextToken"]
    )
    assert len(page["Vertices"]) + len(rest["Vertices"]) == 3
    assert [
        a["ActionName"] for a in sm.list_actions(ActionType="Processing")["ActionSummaries"]
    ] == [action_name]

    sm.delete_association(SourceArn=action, DestinationArn=context)
    assert sm.list_associations(DestinationArn=context)["AssociationSummaries"] == []
    code, _ = error_code(lambda: sm.delete_association(SourceArn=action, DestinationArn=context))
    assert code == "ResourceNotFound"
    sm.delete_action(ActionName=action_name)
    assert sm.list_associations(SourceArn=data)["AssociationSummaries"] == []
    sm.delete_context(ContextName=context_name)
    sm.delete_artifact(ArtifactArn=data)
    for call in (
        lambda: sm.describe_artifact(ArtifactArn=data),
        lambda: sm.describe_action(ActionName=action_name),
        lambda: sm.describe_context(ContextName=context_name),
    ):
        assert error_code(call)[0] == "ResourceNotFound"


def test_lineage_request_errors(server: SalviaServer) -> None:
    sm = server.client()
    missing = "arn:aws:sagemaker:us-east-1:123456789012:artifact/" + "0" * 32
    code, message = error_code(
        lambda: sm.add_association(SourceArn=missing, DestinationArn=missing)
    )
    assert code == "ResourceNotFound" and "SourceArn" in message
    code, message = error_code(lambda: sm.query_lineage(StartArns=[missing]))
    assert code == "ValidationException" and "StartArns" in message
    code, message = error_code(lambda: sm.query_lineage(StartArns=[missing], Direction="Sideways"))
    assert code == "ValidationException" and "direction" in message.lower()
    code, message = error_code(lambda: sm.create_artifact(Source={"SourceUri": "s3://x/y"}))
    assert code == "ValidationException" and "artifacttype" in message.lower()
    code, message = error_code(lambda: sm.delete_artifact())
    assert code == "ValidationException" and "ArtifactArn" in message
    code, message = error_code(lambda: sm.list_associations(SortBy="SourceType"))
    assert code == "ValidationException" and "SortBy" in message
    name = unique("dup")
    sm.create_context(ContextName=name, Source={"SourceUri": "x://y"}, ContextType="T")
    code, message = error_code(
        lambda: sm.create_context(ContextName=name, Source={"SourceUri": "x://y"}, ContextType="T")
    )
    assert code == "ValidationException" and "already exists" in message
