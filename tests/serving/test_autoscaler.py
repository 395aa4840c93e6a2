"""Target tracking's arithmetic: the count a variant is asked for, its bounds and cooldowns."""

from __future__ import annotations

import pytest

from salvia.serving.autoscaler import (
    Decision,
    TargetTracking,
    decide,
    desired_count,
    parse_resource_id,
)

POLICY = TargetTracking("p", target_value=100.0, scale_out_cooldown=60, scale_in_cooldown=300)


@pytest.mark.parametrize(
    ("current", "metric", "expected"),
    [
        (1, 250.0, 3),  # ceil(1 * 250 / 100)
        (2, 150.0, 3),  # ceil(2 * 150 / 100)
        (3, 100.0, 3),  # on target: unchanged
        (3, 100.0000001, 4),  # just above: one more
        (4, 40.0, 2),  # clearly below: ceil(4 * 40 / 100)
        (2, 0.0, 0),  # no traffic at all: as few as the bounds allow
        (100, 95.0, 100),  # ceil(95) < 100, but 95% of target is not clearly below
        (100, 85.0, 85),  # below 90% of target: scales in
    ],
)
def test_desired_count_is_ceil_of_current_times_metric_over_target(
    current: int, metric: float, expected: int
) -> None:
    assert desired_count(current, metric, 100.0) == expected


def test_float_noise_does_not_add_an_instance() -> None:
    assert desired_count(3, 70.0, 70.0) == 3
    assert desired_count(10, 0.7, 0.7) == 10


def test_disabled_scale_in_never_shrinks() -> None:
    assert desired_count(4, 10.0, 100.0, scale_in=False) == 4
    assert desired_count(4, 200.0, 100.0, scale_in=False) == 8


def test_bounds_come_first_even_without_a_metric() -> None:
    assert decide(1, 2, 4, [], None, now=0.0) == Decision(2, "minimum capacity was set to 2")
    assert decide(5, 1, 4, [POLICY], None, now=0.0) == Decision(4, "maximum capacity was set to 4")
    assert decide(2, 1, 4, [POLICY], None, now=0.0) is None


def test_scale_out_is_bounded_by_max_capacity() -> None:
    decision = decide(1, 1, 2, [POLICY], 1000.0, now=0.0)
    assert decision is not None and decision.desired == 2
    assert "policy p" in decision.cause and "target of 100" in decision.cause
    assert decide(2, 1, 2, [POLICY], 1000.0, now=0.0) is None  # already at the maximum


def test_scale_in_is_bounded_by_min_capacity() -> None:
    decision = decide(3, 2, 5, [POLICY], 0.0, now=0.0)
    assert decision is not None and decision.desired == 2


def test_cooldowns_hold_each_direction_after_its_own_last_activity() -> None:
    # scale-out waits 60 s after the last scale-out; a recent scale-in does not hold it
    assert decide(1, 1, 4, [POLICY], 300.0, now=1030.0, last_scale_out=1000.0) is None
    assert decide(1, 1, 4, [POLICY], 300.0, now=1061.0, last_scale_out=1000.0) is not None
    assert decide(1, 1, 4, [POLICY], 300.0, now=1001.0, last_scale_in=1000.0) is not None
    # scale-in waits 300 s after the last scale-in
    assert decide(3, 1, 4, [POLICY], 10.0, now=1200.0, last_scale_in=1000.0) is None
    assert decide(3, 1, 4, [POLICY], 10.0, now=1301.0, last_scale_in=1000.0) is not None


def test_the_policy_asking_for_most_instances_wins() -> None:
    busy = TargetTracking("busy", target_value=50.0, scale_out_cooldown=0, scale_in_cooldown=0)
    idle = TargetTracking("idle", target_value=500.0, scale_out_cooldown=0, scale_in_cooldown=0)
    decision = decide(2, 1, 10, [idle, busy], 100.0, now=0.0)
    assert decision == Decision(
        4,
        "target tracking policy busy: 100 invocations per instance per minute against a "
        "target of 50",
    )
    # one policy wanting to keep the fleet is enough to stop a scale-in
    assert decide(2, 1, 10, [idle, busy], 26.0, now=0.0) is None


def test_suspended_dynamic_scaling_holds_that_direction() -> None:
    out = {"DynamicScalingOutSuspended": True}
    assert decide(1, 1, 4, [POLICY], 300.0, now=0.0, suspended=out) is None
    assert decide(3, 1, 4, [POLICY], 10.0, now=0.0, suspended=out) is not None
    assert (
        decide(3, 1, 4, [POLICY], 10.0, now=0.0, suspended={"DynamicScalingInSuspended": True})
        is None
    )


def test_resource_ids() -> None:
    assert parse_resource_id("endpoint/my-ep/variant/AllTraffic") == ("my-ep", "AllTraffic")
    assert parse_resource_id("service/default/web") is None
    assert parse_resource_id("endpoint/my-ep") is None
