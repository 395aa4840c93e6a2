"""The tuning engine's pieces without a server: search spaces and the optimizer rebuilt from
stored trials."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("optuna")

from salvia.errors import ValidationException
from salvia.tuning.optimizer import (
    STARTUP_TRIALS,
    Definition,
    Optimizer,
    PastTrial,
    make_pruner,
    make_sampler,
)
from salvia.tuning.space import SearchSpace


def space(**ranges: list[dict[str, str]]) -> SearchSpace:
    return SearchSpace.parse(ranges, "ParameterRanges")


def test_scaling_types_map_to_optuna_and_back() -> None:
    parsed = space(
        ContinuousParameterRanges=[
            {"Name": "momentum", "MinValue": "0.5", "MaxValue": "0.999",
             "ScalingType": "ReverseLogarithmic"},
            {"Name": "eta", "MinValue": "0.001", "MaxValue": "1"},  # Auto: spans 1000x -> log
        ],
        IntegerParameterRanges=[{"Name": "depth", "MinValue": "1", "MaxValue": "9"}],
    )  # fmt: skip
    by_name = {r.name: r for r in parsed.ranges}
    momentum, eta, depth = by_name["momentum"], by_name["eta"], by_name["depth"]
    assert eta.scaling == "Logarithmic" and eta.distribution().log  # type: ignore[attr-defined]
    assert depth.scaling == "Linear"
    internal = momentum.sampled("0.99")
    assert internal == pytest.approx(0.01)
    assert float(momentum.hyperparameter(internal)) == pytest.approx(0.99)
    assert momentum.sampled("0.2") is None  # outside the range
    assert depth.hyperparameter(4) == "4"


@pytest.mark.parametrize(
    ("ranges", "words"),
    [
        ({"IntegerParameterRanges": [{"Name": "d", "MinValue": "5", "MaxValue": "1"}]}, "greater"),
        (
            {"ContinuousParameterRanges": [
                {"Name": "x", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"}]},
            "MinValue > 0",
        ),
        (
            {"IntegerParameterRanges": [
                {"Name": "x", "MinValue": "1", "MaxValue": "5",
                 "ScalingType": "ReverseLogarithmic"}]},
            "continuous",
        ),
        ({"CategoricalParameterRanges": [{"Name": "c", "Values": ["a", "a"]}]}, "repeat"),
        (
            {"IntegerParameterRanges": [{"Name": "d", "MinValue": "1", "MaxValue": "2"}],
             "CategoricalParameterRanges": [{"Name": "d", "Values": ["a"]}]},
            "more than one range",
        ),
    ],
)  # fmt: skip
def test_bad_ranges_name_the_member(ranges: dict[str, list[dict[str, str]]], words: str) -> None:
    with pytest.raises(ValidationException) as excinfo:
        SearchSpace.parse(ranges, "ParameterRanges")
    assert words in excinfo.value.message
    assert "ParameterRanges." in excinfo.value.message


def test_a_rebuilt_grid_study_never_repeats_a_stored_combination() -> None:
    grid = space(CategoricalParameterRanges=[{"Name": "c", "Values": ["a", "b", "c", "d"]}])
    definitions = [Definition("", grid, True)]

    def optimizer() -> Optimizer:
        return Optimizer(
            definitions, make_sampler("Grid", definitions, 0, 1), make_pruner("Grid", "Off", {})
        )

    first = optimizer()
    stored = []
    for number in range(2):
        _, params, attrs = first.ask(f"t{number}")
        stored.append((f"t{number}", PastTrial(params, attrs)))
    first.tell("t0", "COMPLETE", 0.5)
    stored[0][1].state, stored[0][1].value = "COMPLETE", 0.5
    # a restarted server: one trial finished, one still running
    second = optimizer()
    for key, past in stored:
        second.add(key, past)
    seen = {past.params["c"] for _, past in stored}
    for number in range(2, 4):
        _, params, _ = second.ask(f"t{number}")
        assert params["c"] not in seen
        seen.add(params["c"])
    assert seen == {"a", "b", "c", "d"}


def test_warm_start_priors_steer_the_first_bayesian_trials() -> None:
    ranges = space(ContinuousParameterRanges=[{"Name": "x", "MinValue": "0", "MaxValue": "1"}])
    definitions = [Definition("", ranges, True)]
    optimizer = Optimizer(
        definitions, make_sampler("Bayesian", definitions, 3, 1), make_pruner("Bayesian", "Off", {})
    )
    for step in range(20):  # the parent learned that x near 0.9 is best
        x = step / 19
        optimizer.add_prior(PastTrial({"x": x}, value=-abs(x - 0.9)))
    asked = [optimizer.ask(f"t{n}")[1]["x"] for n in range(3)]
    assert all(abs(x - 0.9) < 0.2 for x in asked), asked


def test_bayesian_starts_with_a_latin_hypercube_that_survives_a_restart() -> None:
    ranges = space(
        ContinuousParameterRanges=[
            {"Name": "rate", "MinValue": "0.001", "MaxValue": "1", "ScalingType": "Logarithmic"}
        ],
        IntegerParameterRanges=[{"Name": "depth", "MinValue": "1", "MaxValue": "10"}],
    )
    definitions = [Definition("", ranges, True)]

    def optimizer() -> Optimizer:
        sampler = make_sampler("Bayesian", definitions, 5, 1)
        return Optimizer(definitions, sampler, make_pruner("Bayesian", "Off", {}))

    first, stored = optimizer(), []
    for number in range(STARTUP_TRIALS):
        _, params, attrs = first.ask(f"t{number}")
        first.tell(f"t{number}", "COMPLETE", 0.0)
        stored.append(PastTrial(params, attrs, "COMPLETE", 0.0))
    by_name = {r.name: r for r in ranges.ranges}
    rates = [float(by_name["rate"].hyperparameter(p["rate"])) for p in (t.params for t in stored)]
    depths = [int(by_name["depth"].hyperparameter(p["depth"])) for p in (t.params for t in stored)]
    # one trial per tenth of each range, on its scale: log-spaced rates, every depth once
    assert sorted(int((math.log10(r) + 3) / 3 * STARTUP_TRIALS) for r in rates) == list(
        range(STARTUP_TRIALS)
    )
    assert sorted(depths) == list(range(1, 11))

    # a restarted server rebuilds the study from the same seed: the design continues as it was
    again = optimizer()
    for number, past in enumerate(stored[:4]):
        again.add(f"t{number}", past)
    assert again.ask("t4")[1] == stored[4].params
    # and after the start, TPE proposes from what it learned
    after = first.ask("t-next")[1]
    assert set(after) == {"rate", "depth"}


def test_the_median_rule_stops_a_trial_behind_finished_ones() -> None:
    ranges = space(IntegerParameterRanges=[{"Name": "d", "MinValue": "1", "MaxValue": "9"}])
    definitions = [Definition("", ranges, True)]
    optimizer = Optimizer(
        definitions, make_sampler("Random", definitions, 0, 1), make_pruner("Random", "Auto", {})
    )
    for number in range(3):
        optimizer.ask(f"good{number}")
        for step in range(10):
            optimizer.report(f"good{number}", step, 0.9 + step / 100)
        optimizer.tell(f"good{number}", "COMPLETE", 0.99)
    optimizer.ask("bad")
    decisions = [optimizer.report("bad", step, 0.5) for step in range(5)]
    assert decisions[:2] == [False, False]  # warm-up steps
    assert decisions[2] is True
