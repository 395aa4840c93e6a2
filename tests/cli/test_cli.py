"""The `salvia` command, run as a user runs it, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import SalviaServer


def salvia(*args: str, home: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SALVIA_HOME": home}
    return subprocess.run(
        [sys.executable, "-m", "salvia.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_and_experiments_commands(own_server: SalviaServer) -> None:
    home = str(own_server.home)
    status = salvia("status", home=home)
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and own_server.url in status.stdout

    empty = salvia("experiments", "list", home=home)
    assert empty.returncode == 0 and "No experiments." in empty.stdout

    sm = own_server.client()
    sm.create_experiment(ExperimentName="cli-one", Description="the first")
    sm.create_experiment(ExperimentName="cli-two")
    sm.create_trial(TrialName="cli-one-trial", ExperimentName="cli-one")
    listing = salvia(
        "experiments", "list", "--sort-by", "Name", "--sort-order", "Ascending", home=home
    )
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DISPLAY"]
    assert [line.split()[0] for line in lines[1:]] == ["cli-one", "cli-two"]

    described = salvia("experiments", "describe", "cli-one", home=home)
    assert described.returncode == 0
    assert "the first" in described.stdout and "cli-one-trial" in described.stdout

    missing = salvia("experiments", "describe", "nope", home=home)
    assert missing.returncode == 1 and "does not exist" in missing.stderr

    own_server.stop()
    stopped = salvia("status", home=home)
    assert stopped.returncode == 1 and "not running" in stopped.stdout


def test_demo_seeds_a_real_experiment(own_server: SalviaServer) -> None:
    from salvia.demo import EXPERIMENT, seed_demo

    assert seed_demo(own_server.url) is True
    assert seed_demo(own_server.url) is False  # idempotent
    sm = own_server.client()
    component = sm.describe_trial_component(TrialComponentName=f"{EXPERIMENT}-linear-regression")
    mse = component["Metrics"][0]
    assert mse["MetricName"] == "train:mse" and mse["Count"] == 60
    assert mse["Last"] < 0.05 < mse["Max"]  # gradient descent really fitted the data
    s3 = own_server.client("s3")
    body = s3.get_object(Bucket="salvia-demo", Key="data/train.csv")["Body"].read()
    assert len(body.splitlines()) == 400
