"""`salvia iam ...` and `salvia audit` against an authenticated server: a user made from a
Role Manager persona can do what the persona allows, and the audit trail shows it."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from salvia.cli.main import main
from tests.conftest import SalviaServer, unique


def salvia(server: SalviaServer, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    command, rest = args[0], args[1:]
    status = main(["--home", str(server.home), command, "--endpoint-url", server.url, *rest])
    return status, capsys.readouterr().out


@pytest.fixture
def admin(iam_server: SalviaServer, monkeypatch: pytest.MonkeyPatch) -> SalviaServer:
    key, secret = iam_server.credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return iam_server


def test_personas_users_keys_and_the_audit_trail(
    admin: SalviaServer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, listed = salvia(admin, capsys, "iam", "personas", "list")
    assert status == 0
    for persona in ("data-scientist", "mlops-engineer", "compute-role"):
        assert persona in listed

    name = unique("carol")
    status, arn = salvia(admin, capsys, "iam", "users", "create", name)
    assert arn.strip() == f"arn:aws:iam::123456789012:user/{name}"
    status, keys = salvia(admin, capsys, "iam", "keys", "create", name)
    values = dict(line.split("=", 1) for line in keys.split())
    key, secret = values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
    status, applied = salvia(
        admin, capsys, "iam", "personas", "apply", "data-scientist", "--user", name
    )
    assert status == 0 and "SalviaDataScientist" in applied
    _, users = salvia(admin, capsys, "iam", "users", "list")
    assert name in users
    status, signed = salvia(
        admin, capsys, "iam", "users", "password", name, "--password", "a studio password"
    )
    assert status == 0 and "may sign in to Studio" in signed
    profile = admin.client("iam").get_login_profile(UserName=name)["LoginProfile"]
    assert profile["UserName"] == name

    scientist = admin.client(credentials=(key, secret))
    experiment = unique("science")
    scientist.create_experiment(ExperimentName=experiment)
    with pytest.raises(ClientError) as refused:
        scientist.delete_endpoint(EndpointName="production")
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"

    status, trail = salvia(admin, capsys, "audit", "--user", name, "--json")
    assert status == 0
    rows = json.loads(trail)
    actions = {(row[3], row[6]) for row in rows}
    assert ("CreateExperiment", "Success") in actions
    assert ("DeleteEndpoint", "AccessDeniedException") in actions
    _, denials = salvia(admin, capsys, "audit", "--user", name, "--denied")
    assert "DeleteEndpoint" in denials and "CreateExperiment" not in denials
