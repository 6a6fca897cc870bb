"""The braking math the safety filter rests on (pirl_robot/safety/limiter.py), checked by brute force."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pirl_robot.safety import limiter

periods = st.sampled_from([0.002, 0.01, 0.02, 0.05])
accels = st.floats(0.05, 100.0)


def simulated_travel(v: float, accel: float, period: float) -> float:
    """Tick by tick: move at v, then brake by accel*period per tick until stopped."""
    travel = 0.0
    while v > 0:
        travel += v * period
        v = max(v - accel * period, 0.0)
    return travel


@given(v=st.floats(0.0, 5.0), accel=accels, period=periods)
@settings(max_examples=300, deadline=None)
def test_stopping_travel_matches_a_tick_by_tick_stop(v, accel, period):
    expected = simulated_travel(v, accel, period)
    got = limiter.stopping_travel(np.array([v]), np.array([accel]), period)[0]
    assert abs(got - expected) <= 1e-9 * (1 + expected)


@given(dist=st.floats(0.0, 5.0), accel=accels, period=periods)
@settings(max_examples=300, deadline=None)
def test_max_speed_before_limit_is_the_largest_speed_that_still_stops_in_time(dist, accel, period):
    v = limiter.max_speed_before_limit(np.array([dist]), np.array([accel]), period)[0]
    assert v >= 0
    assert simulated_travel(v, accel, period) <= dist * (1 + 1e-9) + 1e-12
    faster = v * (1 + 1e-6) + 1e-9
    assert simulated_travel(faster, accel, period) > dist  # and no faster speed would


def test_without_an_acceleration_limit_the_bound_is_one_step():
    v = limiter.max_speed_before_limit(np.array([0.3, 0.0, np.inf]), np.array([np.inf, np.inf, 2.0]), 0.02)
    assert v.tolist() == [15.0, 0.0, np.inf]


@given(v=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=7), accel=accels, period=periods)
@settings(max_examples=200, deadline=None)
def test_a_braking_plan_ends_at_rest_and_its_tail_is_the_next_plan(v, accel, period):
    v = np.array(v)
    a = np.full_like(v, accel)
    q = np.zeros_like(v)
    plan = limiter.braking_plan(q, v, a, period)
    steps = np.diff(plan, axis=0) / period
    assert not steps[-1:].any() if len(steps) > 1 else True
    speeds = np.vstack([v, steps])
    assert (np.abs(np.diff(speeds, axis=0)) <= accel * period + 1e-9).all()  # within the acceleration limit
    assert np.allclose(plan[-1], np.sign(v) * limiter.stopping_travel(v, a, period) - v * period)
    v1 = limiter.braking_velocity(v, a, period)  # one braking tick later the plan is the rest of this one
    tail = limiter.braking_plan(plan[1] if len(plan) > 1 else q, v1, a, period)
    rest = plan[1:] if len(plan) > 1 else plan
    n = max(len(tail), len(rest))  # rounding of |v| / (a T) may add one tick at rest to either plan
    pad = lambda p: np.vstack([p, np.repeat(p[-1:], n - len(p), axis=0)])  # noqa: E731
    assert np.allclose(pad(tail), pad(rest), rtol=0, atol=1e-9) and abs(len(tail) - len(rest)) <= 1


def test_lower_priority_limits_yield_to_the_nearest_allowed_value():
    v_des = np.array([5.0, -5.0, 0.3])
    intervals = [("position_limit", np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0])),
                 ("acceleration_limit", np.array([2.0, -0.5, 0.0]), np.array([3.0, 0.5, 0.2]))]
    v, binding = limiter.clip_by_priority(v_des, intervals)
    assert v.tolist() == [1.0, -0.5, 0.2]  # [2, 3] misses [-1, 1]: the nearest point 1 is kept
    assert binding["position_limit"].tolist() == [True, False, False]
    assert binding["acceleration_limit"].tolist() == [False, True, True]
