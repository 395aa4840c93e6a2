"""Users, groups, roles and policies in authenticated mode, managed with boto3's IAM client and
enforced on SageMaker, S3 and STS calls; every mutating call and refusal lands in the audit
trail, read back with CloudTrail's LookupEvents."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import SalviaServer, unique

ACCOUNT = "123456789012"


@pytest.fixture(scope="module")
def server(iam_server: SalviaServer) -> SalviaServer:
    return iam_server


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def new_user(server: SalviaServer, *statements: dict[str, Any], **attach: str) -> tuple[str, ...]:
    """A user with an inline policy of `statements` (and managed policies), and its key."""
    iam = server.client("iam")
    name = unique("user")
    iam.create_user(UserName=name)
    if statements:
        iam.put_user_policy(
            UserName=name, PolicyName="inline", PolicyDocument=document(*statements)
        )
    for arn in attach.values():
        iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return name, key["AccessKeyId"], key["SecretAccessKey"]


def denied(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as refused:
        call(*args, **kwargs)
    return str(refused.value.response["Error"]["Code"])


def test_iam_operations_as_boto3_calls_them(server: SalviaServer) -> None:
    iam = server.client("iam")
    name = unique("alice")
    created = iam.create_user(UserName=name, Tags=[{"Key": "team", "Value": "red"}])["User"]
    assert created["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/{name}"
    assert iam.get_user(UserName=name)["User"]["UserId"] == created["UserId"]
    assert name in [u["UserName"] for u in iam.list_users()["Users"]]
    assert denied(iam.create_user, UserName=name) == "EntityAlreadyExists"
    assert denied(iam.get_user, UserName="nobody-here") == "NoSuchEntity"

    key = iam.create_access_key(UserName=name)["AccessKey"]
    assert len(key["SecretAccessKey"]) == 40
    listed = iam.list_access_keys(UserName=name)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [key["AccessKeyId"]]
    assert "SecretAccessKey" not in listed[0]
    assert denied(iam.delete_user, UserName=name) == "DeleteConflict"

    group = unique("group")
    iam.create_group(GroupName=group)
    iam.add_user_to_group(GroupName=group, UserName=name)
    assert [u["UserName"] for u in iam.get_group(GroupName=group)["Users"]] == [name]
    iam.put_group_policy(
        GroupName=group,
        PolicyName="read",
        PolicyDocument=document({"Effect": "Allow", "Action": "sagemaker:List*", "Resource": "*"}),
    )
    as_alice = server.client(credentials=(key["AccessKeyId"], key["SecretAccessKey"]))
    assert "ExperimentSummaries" in as_alice.list_experiments()  # allowed through the group

    trust = document(
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )
    role = unique("role")
    made = iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)["Role"]
    assert made["Arn"] == f"arn:aws:iam::{ACCOUNT}:role/{role}"
    got = iam.get_role(RoleName=role)["Role"]
    assert got["AssumeRolePolicyDocument"]["Statement"][0]["Action"] == "sts:AssumeRole"
    iam.put_role_policy(
        RoleName=role,
        PolicyName="inline",
        PolicyDocument=document({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}),
    )
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["inline"]
    policy = iam.create_policy(
        PolicyName=unique("pol"),
        PolicyDocument=document({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}),
    )["Policy"]
    iam.attach_role_policy(RoleName=role, PolicyArn=policy["Arn"])
    iam.attach_group_policy(GroupName=group, PolicyArn="arn:aws:iam::aws:policy/ReadOnlyAccess")
    attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [policy["Arn"]]
    bad = iam.put_user_policy
    assert (
        denied(bad, UserName=name, PolicyName="x", PolicyDocument='{"Statement": "no"}')
        == "MalformedPolicyDocument"
    )

    iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"], Status="Inactive")
    assert denied(as_alice.list_experiments) == "UnrecognizedClientException"
    iam.update_access_key(UserName=name, AccessKeyId=key["AccessKeyId"], Status="Active")
    assert "ExperimentSummaries" in as_alice.list_experiments(MaxResults=5)
    iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
    refused = denied(as_alice.list_experiments)
    assert refused == "UnrecognizedClientException"  # a deleted key is an unknown key
    iam.delete_user(UserName=name)
    assert denied(iam.get_user, UserName=name) == "NoSuchEntity"


def test_a_user_limited_to_describe_can_describe_but_not_create(server: SalviaServer) -> None:
    sm = server.client()
    experiment = unique("exp")
    sm.create_experiment(ExperimentName=experiment)
    _, key, secret = new_user(
        server, {"Effect": "Allow", "Action": "sagemaker:Describe*", "Resource": "*"}
    )
    reader = server.client(credentials=(key, secret))
    assert reader.describe_experiment(ExperimentName=experiment)["ExperimentName"] == experiment
    assert denied(reader.create_experiment, ExperimentName=unique("exp")) == "AccessDeniedException"
    assert denied(reader.list_experiments) == "AccessDeniedException"
    assert denied(reader.delete_experiment, ExperimentName=experiment) == "AccessDeniedException"
    assert sm.describe_experiment(ExperimentName=experiment)["ExperimentName"] == experiment


def test_a_tag_conditioned_policy_allows_only_its_teams_resources(server: SalviaServer) -> None:
    sm = server.client()
    red, blue = unique("red"), unique("blue")
    sm.create_experiment(ExperimentName=red, Tags=[{"Key": "team", "Value": "red"}])
    sm.create_experiment(ExperimentName=blue, Tags=[{"Key": "team", "Value": "blue"}])
    _, key, secret = new_user(
        server,
        {
            "Effect": "Allow",
            "Action": ["sagemaker:Describe*", "sagemaker:Update*", "sagemaker:Delete*"],
            "Resource": "*",
            "Condition": {"StringEquals": {"sagemaker:ResourceTag/team": "red"}},
        },
        {
            "Effect": "Allow",
            "Action": "sagemaker:CreateExperiment",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:RequestTag/team": "red"},
                "ForAllValues:StringEquals": {"aws:TagKeys": ["team", "owner"]},
            },
        },
    )
    team = server.client(credentials=(key, secret))
    assert team.describe_experiment(ExperimentName=red)["ExperimentName"] == red
    assert denied(team.describe_experiment, ExperimentName=blue) == "AccessDeniedException"
    team.update_experiment(ExperimentName=red, Description="ours")
    assert denied(team.update_experiment, ExperimentName=blue) == "AccessDeniedException"

    mine = unique("red")
    team.create_experiment(ExperimentName=mine, Tags=[{"Key": "team", "Value": "red"}])
    assert team.describe_experiment(ExperimentName=mine)["ExperimentName"] == mine
    create = team.create_experiment
    assert denied(create, ExperimentName=unique("x")) == "AccessDeniedException"  # untagged
    blue_tag = [{"Key": "team", "Value": "blue"}]
    assert denied(create, ExperimentName=unique("x"), Tags=blue_tag) == "AccessDeniedException"
    extra = [{"Key": "team", "Value": "red"}, {"Key": "cost", "Value": "1"}]
    assert denied(create, ExperimentName=unique("x"), Tags=extra) == "AccessDeniedException"


def test_explicit_deny_wins(server: SalviaServer) -> None:
    iam = server.client("iam")
    name, key, secret = new_user(
        server,
        {"Effect": "Deny", "Action": "sagemaker:DeleteExperiment", "Resource": "*"},
        admin="arn:aws:iam::aws:policy/AdministratorAccess",
    )
    powerful = server.client(credentials=(key, secret))
    experiment = unique("exp")
    powerful.create_experiment(ExperimentName=experiment)
    assert denied(powerful.delete_experiment, ExperimentName=experiment) == "AccessDeniedException"

    group = unique("nodelete")
    iam.create_group(GroupName=group)
    iam.put_group_policy(
        GroupName=group,
        PolicyName="deny-iam",
        PolicyDocument=document({"Effect": "Deny", "Action": "iam:*", "Resource": "*"}),
    )
    iam.add_user_to_group(GroupName=group, UserName=name)
    own_iam = server.client("iam", credentials=(key, secret))
    assert denied(own_iam.list_users) == "AccessDenied"
    assert experiment in [
        e["ExperimentName"]
        for e in powerful.list_experiments(MaxResults=100)["ExperimentSummaries"]
    ]


def test_s3_access_follows_prefix_policies(server: SalviaServer) -> None:
    bucket = unique("data")
    s3 = server.client("s3")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="team-a/x.csv", Body=b"a")
    s3.put_object(Bucket=bucket, Key="team-b/x.csv", Body=b"b")
    _, key, secret = new_user(
        server,
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": f"arn:aws:s3:::{bucket}/team-a/*",
        },
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": "team-a/*"}},
        },
    )
    team_a = server.client("s3", credentials=(key, secret))
    assert team_a.get_object(Bucket=bucket, Key="team-a/x.csv")["Body"].read() == b"a"
    team_a.put_object(Bucket=bucket, Key="team-a/y.csv", Body=b"y")
    assert denied(team_a.get_object, Bucket=bucket, Key="team-b/x.csv") == "AccessDenied"
    assert denied(team_a.put_object, Bucket=bucket, Key="team-b/z", Body=b"z") == "AccessDenied"
    listed = team_a.list_objects_v2(Bucket=bucket, Prefix="team-a/")["Contents"]
    assert [o["Key"] for o in listed] == ["team-a/x.csv", "team-a/y.csv"]
    assert denied(team_a.list_objects_v2, Bucket=bucket) == "AccessDenied"
    source = {"Bucket": bucket, "Key": "team-b/x.csv"}
    copy = team_a.copy_object
    assert denied(copy, Bucket=bucket, Key="team-a/c", CopySource=source) == "AccessDenied"
    objects = {"Objects": [{"Key": "team-a/y.csv"}]}  # no s3:DeleteObject at all
    assert denied(team_a.delete_objects, Bucket=bucket, Delete=objects) == "AccessDenied"


def test_sts_caller_identity_and_assumed_roles(server: SalviaServer) -> None:
    iam = server.client("iam")
    role = unique("reader")
    arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=document(
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
         "Action": "sts:AssumeRole"}))["Role"]["Arn"]  # fmt: skip
    iam.put_role_policy(
        RoleName=role,
        PolicyName="list",
        PolicyDocument=document({"Effect": "Allow", "Action": "sagemaker:List*", "Resource": "*"}),
    )
    name, key, secret = new_user(
        server, {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": arn}
    )
    sts = server.client("sts", credentials=(key, secret))
    me = sts.get_caller_identity()
    assert me["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/{name}"
    assert me["Account"] == ACCOUNT
    issued = sts.assume_role(RoleArn=arn, RoleSessionName="s1")
    credentials = issued["Credentials"]
    assert credentials["AccessKeyId"].startswith("ASIA")
    assert issued["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/s1"
    session = (credentials["AccessKeyId"], credentials["SecretAccessKey"],
               credentials["SessionToken"])  # fmt: skip
    as_role = server.client(credentials=session)
    assert as_role.list_models()["Models"] == []
    assert denied(as_role.create_experiment, ExperimentName=unique("x")) == "AccessDeniedException"
    role_identity = server.client("sts", credentials=session).get_caller_identity()
    assert role_identity["Arn"] == issued["AssumedRoleUser"]["Arn"]
    forged = (credentials["AccessKeyId"], credentials["SecretAccessKey"], "forged-token")
    assert denied(server.client(credentials=forged).list_models) == "UnrecognizedClientException"
    other = unique("other")
    iam.create_role(RoleName=other, AssumeRolePolicyDocument=document(
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}))  # fmt: skip
    other_arn = f"arn:aws:iam::{ACCOUNT}:role/{other}"
    assert denied(sts.assume_role, RoleArn=other_arn, RoleSessionName="s") == "AccessDenied"
    iam.put_user_policy(
        UserName=name,
        PolicyName="inline",
        PolicyDocument=document({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}),
    )
    assert sts.assume_role(RoleArn=other_arn, RoleSessionName="s")["Credentials"]
    private = unique("private")
    iam.create_role(RoleName=private, AssumeRolePolicyDocument=document(
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/someone-else"},
         "Action": "sts:AssumeRole"}))  # fmt: skip
    private_arn = f"arn:aws:iam::{ACCOUNT}:role/{private}"
    refused = denied(sts.assume_role, RoleArn=private_arn, RoleSessionName="s")
    assert refused == "AccessDenied"  # its trust policy names someone else


def test_the_audit_trail_holds_the_calls_and_refusals_of_a_user(server: SalviaServer) -> None:
    name, key, secret = new_user(
        server,
        {"Effect": "Allow", "Action": "sagemaker:*Experiment", "Resource": "*"},
        {"Effect": "Allow", "Action": ["iam:CreateUser", "s3:PutObject"], "Resource": "*"},
    )
    user = server.client(credentials=(key, secret))
    experiment = unique("audited")
    user.create_experiment(ExperimentName=experiment)
    user.update_experiment(ExperimentName=experiment, Description="changed")
    denied(user.create_trial, TrialName=unique("t"), ExperimentName=experiment)
    user.delete_experiment(ExperimentName=experiment)
    denied(user.delete_experiment, ExperimentName=experiment + "-never")  # a failed mutation
    # the XML protocols' failures are recorded by their codes too
    iam = server.client("iam", credentials=(key, secret))
    assert denied(iam.create_user, UserName=name) == "EntityAlreadyExists"
    s3 = server.client("s3", credentials=(key, secret))
    assert denied(s3.put_object, Bucket=unique("nobucket"), Key="k", Body=b"x") == "NoSuchBucket"

    trail = server.client("cloudtrail")
    events = trail.lookup_events(
        LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": name}]
    )["Events"]
    details = [json.loads(e["CloudTrailEvent"]) for e in reversed(events)]
    seen = [(d["eventName"], d["outcome"]) for d in details]
    assert seen == [
        ("CreateExperiment", "Success"),
        ("UpdateExperiment", "Success"),
        ("CreateTrial", "AccessDeniedException"),
        ("DeleteExperiment", "Success"),
        ("DeleteExperiment", "ResourceNotFound"),
        ("CreateUser", "EntityAlreadyExists"),
        ("PutObject", "NoSuchBucket"),
    ]
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:experiment/{experiment.lower()}"
    assert details[0]["resources"] == [{"ARN": arn}]
    assert {d["sourceIPAddress"] for d in details} == {"127.0.0.1"}
    assert {d["userIdentity"]["accessKeyId"] for d in details} == {key}
    assert all(isinstance(d["eventTime"], float) for d in details)
    only_denials = trail.lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "CreateTrial"}]
    )["Events"]
    assert any(e["Username"] == name for e in only_denials)


def test_log_group_resources(server: SalviaServer) -> None:
    group = "/aws/sagemaker/TrainingJobs"
    _, key, secret = new_user(
        server,
        {
            "Effect": "Allow",
            "Action": "logs:DescribeLogStreams",
            "Resource": f"arn:aws:logs:*:{ACCOUNT}:log-group:{group}",
        },
    )
    logs = server.client("logs", credentials=(key, secret))
    try:
        logs.describe_log_streams(logGroupName=group)
    except ClientError as error:  # no job has logged yet: not found, but not refused
        assert error.response["Error"]["Code"] == "ResourceNotFoundException"
    other = logs.describe_log_streams
    assert denied(other, logGroupName="/aws/sagemaker/Endpoints") == "AccessDeniedException"
