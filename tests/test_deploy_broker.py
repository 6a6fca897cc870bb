"""The action-chunk broker: one action per tick, time-aligned chunks, blending, lead, underruns."""

import numpy as np
import pytest

from pirl_robot.deploy.broker import ActionChunkBroker


def chunk(value, h=8, a=2):
    return np.full((h, a), float(value)) + np.arange(h)[:, None] * 0.01


def test_hands_out_chunk_in_order_and_requests_after_exec_horizon():
    b = ActionChunkBroker(exec_horizon=4)
    assert b.needs_inference(0) and b.action(0) is None
    b.mark_requested(0)
    assert not b.needs_inference(0) and b.pending
    b.put(chunk(1), obs_tick=0, now_tick=0)
    got = [b.action(t)[0] for t in range(4)]
    np.testing.assert_allclose(got, [1.0, 1.01, 1.02, 1.03])
    assert not b.needs_inference(3) and b.needs_inference(4)


def test_late_chunk_skips_past_actions():
    b = ActionChunkBroker(exec_horizon=8)
    b.mark_requested(10)
    b.put(chunk(2), obs_tick=10, now_tick=13)  # computed from tick 10's observation, arrived at tick 13
    np.testing.assert_allclose(b.action(13)[0], 2.03)


def test_lead_ticks_request_early():
    b = ActionChunkBroker(exec_horizon=6, lead_ticks=2)
    b.put(chunk(0), 0, 0)
    assert [b.needs_inference(t) for t in range(6)] == [False] * 4 + [True, True]


def test_blend_crossfades_overlapping_chunks():
    b = ActionChunkBroker(exec_horizon=4, blend_ticks=3)
    b.put(chunk(0, a=1), 0, 0)
    for t in range(4):
        b.action(t)
    b.put(np.full((8, 1), 10.0), obs_tick=4, now_tick=4)
    old = chunk(0, a=1)[:, 0]
    expected = [(1 - w) * old[t] + w * 10.0 for t, w in zip(range(4, 7), (0.25, 0.5, 0.75))] + [10.0]
    got = [b.action(t)[0] for t in range(4, 8)]
    np.testing.assert_allclose(got, expected)


def test_blend_ends_where_old_chunk_ends():
    b = ActionChunkBroker(exec_horizon=7, blend_ticks=5)
    b.put(chunk(0, a=1), 0, 0)
    b.put(np.full((8, 1), 10.0), obs_tick=7, now_tick=7)  # old chunk covers only tick 7
    assert b.action(7)[0] == pytest.approx((1 - 1 / 6) * chunk(0, a=1)[7, 0] + 10.0 / 6)
    assert b.action(8)[0] == 10.0


def test_underrun_returns_none_and_reset_clears():
    b = ActionChunkBroker(exec_horizon=8)
    b.put(chunk(1), 0, 0)
    assert b.action(8) is None and b.remaining(8) == 0 and b.remaining(5) == 3
    b.reset()
    assert b.action(0) is None and b.chunks == 0 and b.needs_inference(0)


def test_rejects_bad_chunks_and_settings():
    b = ActionChunkBroker(exec_horizon=2)
    with pytest.raises(ValueError, match="finite"):
        b.put(np.array([[np.nan, 0.0]]), 0, 0)
    with pytest.raises(ValueError):
        ActionChunkBroker(exec_horizon=0)


def test_rtc_prefix_is_the_plan_left_from_the_request_tick():
    b = ActionChunkBroker(exec_horizon=4, lead_ticks=2)
    assert b.rtc_prefix(0, inference_delay=2) is None  # nothing to continue yet
    b.put(chunk(1), obs_tick=10, now_tick=10)
    p = b.rtc_prefix(12, inference_delay=2)
    np.testing.assert_allclose(p.actions[:, 0], chunk(1)[2:, 0])  # ticks 12..17 of the plan
    assert (p.inference_delay, p.execution_horizon) == (2, 6)
    p = b.rtc_prefix(16, inference_delay=5, execution_horizon=3)  # 2 actions left: delay and horizon capped
    assert p.actions.shape == (2, 2) and (p.inference_delay, p.execution_horizon) == (2, 2)
    assert b.rtc_prefix(18, inference_delay=1) is None  # the plan is used up
