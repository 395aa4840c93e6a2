"""Studio in authenticated mode: users sign in with the password IAM's login profile holds, and
every page acts as them, seeing and doing only what their policies allow."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from salvia.ui.signin import (
    COOKIE,
    FORM_COOKIE,
    LOCK_AFTER_USER,
    LOCK_SECONDS,
    Lockouts,
    _cookie,
)
from tests.conftest import SalviaServer, unique
from tests.ui.conftest import Visit
from tests.ui.test_studio import archive

# a browser and a running job: SQLite only (login profiles live in the user's record, whose
# store path the IAM tests cover on both backends)
pytestmark = pytest.mark.one_backend

BUCKET = "signin-data"
PASSWORD = "correct horse battery"
SLEEPER = "import time\nfor _ in range(600):\n    time.sleep(0.5)\n"


@dataclass(frozen=True)
class Team:
    viewer: str  # may read (AmazonSageMakerReadOnly) but change nothing
    job: str  # a training job that runs until stopped


@pytest.fixture(scope="module")
def team(iam_server: SalviaServer) -> Team:
    iam, sm, s3 = iam_server.client("iam"), iam_server.client(), iam_server.client("s3")
    viewer = unique("viewer")
    iam.create_user(UserName=viewer)
    iam.attach_user_policy(
        UserName=viewer, PolicyArn="arn:aws:iam::aws:policy/AmazonSageMakerReadOnly"
    )
    iam.create_login_profile(UserName=viewer, Password=PASSWORD)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
             "Principal": {"Service": "sagemaker.amazonaws.com"}}]}  # fmt: skip
    role = iam.create_role(RoleName="StudioJobs", AssumeRolePolicyDocument=json.dumps(trust))
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="code/src.tar.gz", Body=archive({"train.py": SLEEPER}))
    job = unique("sleeps")
    sm.create_training_job(
        TrainingJobName=job,
        RoleArn=role["Role"]["Arn"],
        AlgorithmSpecification={"TrainingImage": "salvia/python", "TrainingInputMode": "File"},
        HyperParameters={
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/code/src.tar.gz"),
        },
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/output"},
        ResourceConfig={"InstanceType": "local", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 300},
    )
    return Team(viewer, job)


@pytest.fixture(scope="module")
def studio_server(iam_server: SalviaServer) -> SalviaServer:
    """The browser fixtures' server: here the authenticated one."""
    return iam_server


def sign_in(visit: Visit, user: str, password: str, path: str = "/studio/home") -> Any:
    visit.open(path, settle=False)
    assert "/studio/sign-in" in visit.page.url  # no session: the sign-in page first
    visit.page.fill("#user", user)
    visit.page.fill("#password", password)
    with visit.page.expect_navigation():
        visit.page.click("#sign-in")
    return visit.page


def test_a_wrong_password_is_refused_and_the_right_one_signs_in(visit: Visit, team: Team) -> None:
    page = sign_in(visit, team.viewer, "not the password")
    assert "/studio/sign-in" in page.url
    assert "user name or password is wrong" in page.locator("#sign-in-error").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == COOKIE]
    assert visit.console_errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]  # the refusal's status, as the browser reports it
    visit.console_errors.clear()
    page.fill("#user", team.viewer)
    page.fill("#password", PASSWORD)
    with page.expect_navigation():
        page.click("#sign-in")
    assert page.url.endswith("/studio/home")
    assert page.locator("#signed-in-user").inner_text() == team.viewer
    visit.assert_clean()


def test_a_read_only_user_sees_lists_and_is_refused_stop_in_words(
    visit: Visit, team: Team, iam_server: SalviaServer
) -> None:
    page = sign_in(visit, team.viewer, PASSWORD, "/studio/training-jobs")
    assert page.url.endswith("/studio/training-jobs")
    assert team.job in page.locator("table").inner_text()
    visit.open(f"/studio/training-jobs/{team.job}", settle=False)
    with page.expect_navigation():
        page.click("#stop")
    shown = page.locator(".error").inner_text()
    assert "AccessDeniedException" in shown
    assert "is not authorized to perform: sagemaker:StopTrainingJob on resource: " in shown
    sm = iam_server.client()
    assert sm.describe_training_job(TrainingJobName=team.job)["TrainingJobStatus"] == "InProgress"
    # the refusal is in the audit trail under the user's name, as a signed request's would be
    trail = iam_server.client("cloudtrail")
    events = trail.lookup_events(
        LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": team.viewer}]
    )["Events"]
    outcomes = {(e["EventName"], json.loads(e["CloudTrailEvent"])["outcome"]) for e in events}
    assert ("StopTrainingJob", "AccessDeniedException") in outcomes
    assert ("ConsoleLogin", "Success") in outcomes


def test_a_form_posted_without_the_csrf_token_is_refused(visit: Visit, team: Team) -> None:
    page = sign_in(visit, team.viewer, PASSWORD)
    stop = f"{visit.base}/studio/training-jobs/{team.job}/stop"
    refused = page.request.post(stop, form={"comment": "no token"}, max_redirects=0)
    assert refused.status == 403
    assert "CSRF token" in refused.text()
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    # with the session's token the post reaches the API, which refuses this user in words
    passed = page.request.post(stop, form={"csrf": token}, max_redirects=0)
    assert passed.status == 303 or "AccessDeniedException" in passed.text()


def test_sign_out_ends_the_session(visit: Visit, team: Team) -> None:
    page = sign_in(visit, team.viewer, PASSWORD)
    session = next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)
    with page.expect_navigation():
        page.click("#sign-out")
    assert "/studio/sign-in" in page.url
    visit.open("/studio/home", settle=False)
    assert "/studio/sign-in" in page.url
    # the old cookie no longer opens anything, even sent again by hand
    again = Browserless(visit.base, {COOKIE: session}).send("GET", "/studio/home")
    assert again.status == 303
    assert again.getheader("location", "").startswith("/studio/sign-in")


@dataclass
class Browserless:
    """A client that keeps cookies and does not follow redirects, to see what a browser gets."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Any:
        parts = urllib.parse.urlsplit(self.base)
        connection = http.client.HTTPConnection(parts.netloc, timeout=30)
        sent = dict(headers or {})
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            response.body = response.read()
            response.text = response.body.decode("utf-8", "replace")
        finally:
            connection.close()
        for value in response.headers.get_all("set-cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";")[0]
        return response

    def form(self, path: str, fields: dict[str, str]) -> Any:
        body = urllib.parse.urlencode(fields).encode()
        kind = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.send("POST", path, body, kind)


def test_session_cookies_are_http_only_same_site_strict_and_scoped(
    iam_server: SalviaServer, team: Team
) -> None:
    client = Browserless(iam_server.url)
    client.send("GET", "/studio/sign-in")
    token = client.cookies[FORM_COOKIE]
    fields = {"user": team.viewer, "password": PASSWORD, "csrf": token, "next": "/studio/home"}
    answer = client.form("/studio/sign-in", fields)
    assert answer.status == 303
    set_cookie = next(v for v in answer.headers.get_all("set-cookie") if v.startswith(COOKIE + "="))
    flags = [part.strip() for part in set_cookie.split(";")]
    assert len(flags[0]) > len(COOKIE) + 40  # a long random id
    assert {"HttpOnly", "SameSite=Strict", "Path=/studio"} <= set(flags)
    assert "Secure" not in flags  # plain http here; over https it is (below)
    home = client.send("GET", "/studio/home")
    assert home.status == 200
    marker = 'name="csrf-token" content="'
    start = home.text.index(marker) + len(marker)
    csrf = home.text[start : home.text.index('"', start)]
    # the test-invoke form reaches the runtime as the signed-in user, who may not invoke
    invoked = client.send(
        "POST",
        "/studio/endpoints/nowhere/invoke",
        b"1,2",
        {"Content-Type": "text/csv", "X-CSRF-Token": csrf},
    )
    assert invoked.status == 403
    assert "sagemaker:InvokeEndpoint" in json.loads(invoked.text)["message"]
    secure = _cookie({"scheme": "https"}, COOKIE, "x", 60)
    assert "Secure" in [part.strip() for part in secure.split(";")]


def test_login_profiles_through_boto3(iam_server: SalviaServer) -> None:
    iam = iam_server.client("iam")
    name = unique("pw")
    iam.create_user(UserName=name)
    with pytest.raises(iam.exceptions.PasswordPolicyViolationException):
        iam.create_login_profile(UserName=name, Password="short")
    created = iam.create_login_profile(UserName=name, Password=PASSWORD)["LoginProfile"]
    assert created["UserName"] == name and created["PasswordResetRequired"] is False
    with pytest.raises(iam.exceptions.EntityAlreadyExistsException):
        iam.create_login_profile(UserName=name, Password=PASSWORD + "?")
    iam.update_login_profile(UserName=name, Password=PASSWORD + "!", PasswordResetRequired=True)
    assert iam.get_login_profile(UserName=name)["LoginProfile"]["PasswordResetRequired"] is True
    with pytest.raises(iam.exceptions.DeleteConflictException):
        iam.delete_user(UserName=name)
    iam.delete_login_profile(UserName=name)
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_login_profile(UserName=name)
    iam.delete_user(UserName=name)


def test_role_manager_applies_a_persona_and_the_audit_trail_shows_refusals(
    visit: Visit, iam_server: SalviaServer
) -> None:
    iam = iam_server.client("iam")
    iam.create_login_profile(UserName="admin", Password=PASSWORD)
    newcomer = unique("newcomer")
    iam.create_user(UserName=newcomer)
    # a wrong password for the newcomer: a refusal the audit page can filter on
    failed = Browserless(iam_server.url)
    failed.send("GET", "/studio/sign-in")
    fields = {"user": newcomer, "password": "guessing", "csrf": failed.cookies[FORM_COOKIE]}
    assert failed.form("/studio/sign-in", fields).status == 401

    page = sign_in(visit, "admin", PASSWORD, "/studio/role-manager")
    for persona in ("data-scientist", "mlops-engineer", "compute-role"):
        assert persona in page.locator("#personas").inner_text()
    page.select_option("#persona", "data-scientist")
    page.select_option("#persona-user", newcomer)
    with page.expect_navigation():
        page.click("#apply-persona")
    assert "SalviaDataScientist" in page.locator("#notice").inner_text()
    attached = iam.list_attached_user_policies(UserName=newcomer)["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["SalviaDataScientist"]

    visit.open("/studio/audit", settle=False)
    page.fill("#audit-user", newcomer)
    page.check("#audit-denied")
    with page.expect_navigation():
        page.click("#audit-apply")
    rows = page.locator("#audit tbody tr").all_inner_texts()
    assert len(rows) == 1 and "ConsoleLogin" in rows[0] and "Failure" in rows[0]
    visit.open("/studio/audit?user=admin", settle=False)
    assert "AttachUserPolicy" in page.locator("#audit").inner_text()
    visit.assert_clean()


def signed_in_client(url: str, user: str, password: str) -> Browserless:
    client = Browserless(url)
    client.send("GET", "/studio/sign-in")
    fields = {"user": user, "password": password, "csrf": client.cookies[FORM_COOKIE]}
    assert client.form("/studio/sign-in", fields).status == 303
    return client


def test_artifacts_download_as_the_signed_in_user(iam_server: SalviaServer, team: Team) -> None:
    iam = iam_server.client("iam")
    reader = unique("reader")
    iam.create_user(UserName=reader)
    iam.create_login_profile(UserName=reader, Password=PASSWORD)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
              "Resource": f"arn:aws:s3:::{BUCKET}/code/*"}]}  # fmt: skip
    iam.put_user_policy(UserName=reader, PolicyName="code", PolicyDocument=json.dumps(policy))
    path = f"/studio/objects/{BUCKET}/code/src.tar.gz"
    allowed = signed_in_client(iam_server.url, reader, PASSWORD).send("GET", path)
    assert allowed.status == 200
    assert allowed.body[:2] == b"\x1f\x8b"  # the archive, through S3 GetObject
    refused = signed_in_client(iam_server.url, team.viewer, PASSWORD).send("GET", path)
    assert refused.status == 403
    assert "s3:GetObject" in refused.text


def test_failed_sign_ins_lock_the_user_name_out_for_a_while(
    iam_server: SalviaServer, team: Team
) -> None:
    iam = iam_server.client("iam")
    name = unique("guessed")
    iam.create_user(UserName=name)
    iam.create_login_profile(UserName=name, Password=PASSWORD)
    client = Browserless(iam_server.url)

    def attempt(password: str) -> Any:
        client.send("GET", "/studio/sign-in")
        fields = {"user": name, "password": password, "csrf": client.cookies[FORM_COOKIE],
                  "next": "/studio/home"}  # fmt: skip
        return client.form("/studio/sign-in", fields)

    for guess in range(LOCK_AFTER_USER):
        assert attempt(f"guess {guess}").status == 401
    locked = attempt(PASSWORD)  # the right password, too late
    assert locked.status == 429
    assert "Too many failed sign-ins: try again in 15 minutes" in locked.text
    assert COOKIE not in client.cookies or not client.cookies[COOKIE]
    # another user is not locked out with it
    other = Browserless(iam_server.url)
    other.send("GET", "/studio/sign-in")
    fields = {"user": team.viewer, "password": PASSWORD, "csrf": other.cookies[FORM_COOKIE],
              "next": "/studio/home"}  # fmt: skip
    assert other.form("/studio/sign-in", fields).status == 303
    trail = iam_server.client("cloudtrail").lookup_events(
        LookupAttributes=[{"AttributeKey": "Username", "AttributeValue": name}]
    )["Events"]
    messages = [json.loads(e["CloudTrailEvent"]).get("errorMessage", "") for e in trail]
    assert any("Locked out" in m for m in messages), messages


def test_the_lock_counts_within_its_window_and_ends() -> None:
    now = [0.0]
    lockouts = Lockouts(clock=lambda: now[0])
    keys = Lockouts.keys("Alice", "10.0.0.1")
    for _ in range(LOCK_AFTER_USER - 1):
        lockouts.failed(keys)
        now[0] += LOCK_SECONDS / (LOCK_AFTER_USER - 1) + 1
    lockouts.failed(keys)  # the first failure has left the window: still four in it
    assert lockouts.locked(keys) == 0
    lockouts.failed(keys)
    assert lockouts.locked(Lockouts.keys("alice", "10.0.0.2")) == LOCK_SECONDS
    now[0] += LOCK_SECONDS
    assert lockouts.locked(keys) == 0
    for _ in range(LOCK_AFTER_USER - 1):
        lockouts.failed(keys)
    lockouts.succeeded("ALICE")  # a success clears the name's count
    for _ in range(LOCK_AFTER_USER - 1):
        lockouts.failed(keys)
    assert lockouts.locked(keys) == 0


def test_a_session_outlives_a_restart_of_the_server_and_ends_at_sign_out(
    tmp_path: Path,
) -> None:
    server = SalviaServer(tmp_path, env={"SALVIA_AUTH_MODE": "iam"}).start()
    try:
        server.credentials = server.admin_credentials()
        iam = server.client("iam")
        name = unique("kept")
        iam.create_user(UserName=name)
        iam.create_login_profile(UserName=name, Password=PASSWORD)
        client = Browserless(server.url)
        client.send("GET", "/studio/sign-in")
        fields = {"user": name, "password": PASSWORD, "csrf": client.cookies[FORM_COOKIE],
                  "next": "/studio/home"}  # fmt: skip
        assert client.form("/studio/sign-in", fields).status == 303
        server.restart()
        home = client.send("GET", "/studio/home")
        assert home.status == 200 and name in home.text
        marker = 'name="csrf-token" content="'
        start = home.text.index(marker) + len(marker)
        csrf = home.text[start : home.text.index('"', start)]
        session = client.cookies[COOKIE]
        assert client.form("/studio/sign-out", {"csrf": csrf}).status == 303
        again = Browserless(server.url, {COOKIE: session}).send("GET", "/studio/home")
        assert again.status == 303  # that session is over, in the store too
    finally:
        server.stop()
