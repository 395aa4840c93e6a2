"""Ready policies: a few AWS managed policies by their ARNs, and Role Manager's personas.

SageMaker Role Manager turns a persona's ML activities into a policy; Salvia ships the same
three personas as documents the CLI (`salvia iam persona ...`) creates and attaches.
"""

from __future__ import annotations

from typing import Any

AWS_POLICY_PREFIX = "arn:aws:iam::aws:policy/"

_READ = ["Describe*", "List*", "Get*", "Search", "BatchGet*", "BatchDescribe*", "QueryLineage"]


def _sagemaker(*actions: str) -> list[str]:
    return [f"sagemaker:{action}" for action in actions]


def _document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


MANAGED: dict[str, dict[str, Any]] = {
    "AdministratorAccess": _document({"Effect": "Allow", "Action": "*", "Resource": "*"}),
    "ReadOnlyAccess": _document(
        {
            "Effect": "Allow",
            "Action": [*_sagemaker(*_READ), "s3:Get*", "s3:List*", "logs:Get*", "logs:Describe*",
                       "logs:FilterLogEvents", "iam:Get*", "iam:List*", "cloudtrail:LookupEvents"],
            "Resource": "*",
        }
    ),
    "AmazonSageMakerFullAccess": _document(
        {"Effect": "Allow", "Action": ["sagemaker:*", "logs:*", "application-autoscaling:*"],
         "Resource": "*"},
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"},
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*",
         "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
    ),
    "AmazonSageMakerReadOnly": _document(
        {"Effect": "Allow", "Action": _sagemaker(*_READ), "Resource": "*"}
    ),
}  # fmt: skip

_DATA_SCIENTIST = _document(
    {
        "Sid": "ExperimentAndTrain",
        "Effect": "Allow",
        "Action": _sagemaker(
            *_READ, "CreateTrainingJob", "StopTrainingJob", "CreateProcessingJob",
            "StopProcessingJob", "CreateHyperParameterTuningJob", "StopHyperParameterTuningJob",
            "CreateExperiment", "UpdateExperiment", "CreateTrial", "UpdateTrial",
            "CreateTrialComponent", "UpdateTrialComponent", "AssociateTrialComponent",
            "DisassociateTrialComponent", "BatchPutMetrics", "AddTags", "CreateModel",
            "CreateTransformJob", "StopTransformJob", "CreateModelPackage",
            "CreateModelPackageGroup", "CreateMlflowTrackingServer",
            "CreatePresignedMlflowTrackingServerUrl", "AddAssociation", "CreateArtifact",
            "CreateAction", "CreateContext", "InvokeEndpoint",
        ),
        "Resource": "*",
    },
    {
        "Sid": "DataAndLogs",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:ListAllMyBuckets",
                   "s3:GetBucketLocation", "logs:Describe*", "logs:Get*", "logs:FilterLogEvents"],
        "Resource": "*",
    },
    {
        "Sid": "PassComputeRole",
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": "*",
        "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
    },
    {
        "Sid": "NoProductionChanges",
        "Effect": "Deny",
        "Action": _sagemaker("DeleteEndpoint", "UpdateEndpoint", "UpdateModelPackage"),
        "Resource": "*",
    },
)  # fmt: skip

_MLOPS = _document(
    {
        "Sid": "OperateModels",
        "Effect": "Allow",
        "Action": ["sagemaker:*", "application-autoscaling:*", "logs:*", "cloudtrail:LookupEvents"],
        "Resource": "*",
    },
    {"Sid": "Artifacts", "Effect": "Allow", "Action": "s3:*", "Resource": "*"},
    {
        "Sid": "PassComputeRole",
        "Effect": "Allow",
        "Action": ["iam:PassRole", "iam:GetRole", "iam:ListRoles"],
        "Resource": "*",
    },
)  # fmt: skip

_COMPUTE = _document(
    {
        "Sid": "JobData",
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:GetBucketLocation",
                   "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
        "Resource": "*",
    },
    {
        "Sid": "JobTelemetry",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "sagemaker:BatchPutMetrics",
                   "sagemaker:Describe*", "sagemaker:UpdateTrialComponent"],
        "Resource": "*",
    },
)  # fmt: skip

PERSONAS: dict[str, tuple[str, dict[str, Any]]] = {
    "data-scientist": (
        "Experiments, training, tuning and processing; reads everything; no production changes",
        _DATA_SCIENTIST,
    ),
    "mlops-engineer": (
        "Deploys, scales and governs models: all of SageMaker, its data and its audit trail",
        _MLOPS,
    ),
    "compute-role": (
        "What a job or endpoint needs at run time: its data, logs and metrics",
        _COMPUTE,
    ),
}

SAGEMAKER_TRUST = _document(
    {
        "Effect": "Allow",
        "Principal": {"Service": "sagemaker.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }
)


def persona_policy_name(persona: str) -> str:
    return "Salvia" + "".join(part.title() for part in persona.split("-"))
