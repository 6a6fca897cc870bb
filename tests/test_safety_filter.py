"""SafetyFilter behaviour on the shipped panda.yaml: e-stop latch, smooth start, controlled stop, bad inputs,
workspace box, events. The limit invariants over random input streams are in test_safety_properties.py."""

from __future__ import annotations

import json
import threading
from time import sleep, time_ns

import numpy as np
import pytest

from pirl_robot.safety import Mode, SafetyEvent, SafetyFilter
from safety_utils import HZ, REST, T, Clock


@pytest.fixture
def filt(panda_cfg, panda_fk):
    return SafetyFilter(panda_cfg, HZ, clock=Clock(), fk=panda_fk)


def run_until_running(f: SafetyFilter, target: np.ndarray, measured=REST, max_ticks: int = 500) -> list[np.ndarray]:
    assert f.resume()[0]
    cmds = []
    for _ in range(max_ticks):
        out = f.step(target, measured, T)
        cmds.append(out.command)
        if out.mode == Mode.RUNNING:
            return cmds
    raise AssertionError(f"never caught up, mode {f.mode}")


def moving_fast(f: SafetyFilter, panda_cfg) -> np.ndarray:
    """Start at rest, then command a far target so that joint 1 runs at its velocity limit."""
    run_until_running(f, REST)
    far = REST.copy()
    far[0] = 2.5
    for _ in range(60):
        f.step(far, f.command, T)
    assert f._v[0] == pytest.approx(panda_cfg.joints[0].max_velocity)
    return far


def test_nothing_is_sent_before_the_operator_resumes(filt):
    for _ in range(3):
        out = filt.step(REST, REST, T)
        assert out.command is None and out.mode == Mode.IDLE


def test_smooth_start_ramps_from_the_measured_state(filt, panda_cfg):
    target = REST + np.r_[[0.3] * 7, -0.03]
    cmds = np.array(run_until_running(filt, target))
    scale = panda_cfg.start.velocity_scale
    vmax = np.array([j.max_velocity for j in panda_cfg.joints] + [panda_cfg.gripper.max_velocity])
    amax = np.array([j.max_acceleration for j in panda_cfg.joints])
    steps = np.diff(np.vstack([REST, cmds]), axis=0)
    # starts at rest from the measured state, under the scaled velocity and acceleration limits
    assert (np.abs(steps[0, :7]) <= scale * amax * T * T + 1e-12).all()
    assert (np.abs(steps) <= scale * vmax * T + 1e-12).all()
    assert (np.abs(np.diff(steps[:, :7], axis=0)) <= scale * amax * T * T + 1e-12).all()
    # moves monotonically towards the target without overshooting it, and ends within the start tolerance
    direction = np.sign(target - REST)
    assert (steps * direction >= -1e-12).all()
    assert ((target - cmds) * direction >= -1e-12).all()
    assert np.abs(cmds[-1] - target).max() <= panda_cfg.start.tolerance
    assert len(cmds) > 20  # a ramp, not a jump


def test_the_start_waits_for_the_arm_not_the_gripper(filt, panda_cfg):
    """Closing on nothing: the policy asks for -1, the fingers stop where they can (measured -0.6). The arm is
    already where the policy wants it, so the start ends at once; the gripper still ramps within its limits."""
    target = np.r_[REST[:7], -1.0]
    measured = np.r_[REST[:7], 1.0]
    assert filt.resume()[0]
    out = filt.step(target, measured, T)
    assert out.mode == Mode.RUNNING and [e.cause for e in out.events] == ["start", "start_done"]
    g = panda_cfg.gripper
    cmds = [out.command]
    for _ in range(60):
        measured[-1] = max(-0.6, measured[-1] - g.max_velocity * T)  # the fingers follow down to their end stop
        cmds.append(filt.step(target, measured, T).command)
    grip = np.array([1.0] + [c[-1] for c in cmds])
    assert (np.abs(np.diff(grip)) <= min(g.max_step, g.max_velocity * T) + 1e-12).all()
    assert grip.min() >= g.min_position and grip[-1] == -1.0  # the command reaches the policy's -1, never below
    assert filt.mode == Mode.RUNNING and all(np.array_equal(c[:7], REST[:7]) for c in cmds)


def test_controlled_stop_decelerates_within_limits_to_rest(filt, panda_cfg):
    far = moving_fast(filt, panda_cfg)
    v0 = filt._v.copy()
    filt.stop("operator")
    positions = [filt.command]
    for _ in range(200):
        out = filt.step(far, filt.command, T)
        positions.append(out.command)
        if out.mode == Mode.STOPPED:
            break
    assert out.mode == Mode.STOPPED
    v = np.diff(np.array(positions), axis=0) / T
    amax = np.array([j.max_acceleration for j in panda_cfg.joints])
    assert (np.abs(np.diff(np.vstack([v0, v])[:, :7], axis=0)) <= amax * T + 1e-9).all()  # decelerates in limits
    assert (np.abs(v[:, 0]) <= abs(v0[0]) + 1e-12).all() and np.all(np.diff(np.abs(v[:, 0])) <= 1e-12)
    assert not v[-1].any()  # exactly zero velocity at the end
    ticks_needed = np.ceil(v0[0] / (amax[0] * T))
    assert len(v) <= ticks_needed + 1
    rest = filt.command
    for _ in range(5):
        assert np.array_equal(filt.step(far, rest, T).command, rest)  # and stays there


def test_estop_latches_until_reset_and_cancels_the_active_command(filt, panda_cfg):
    far = moving_fast(filt, panda_cfg)
    measured = filt.command - 0.01  # the arm lags its command a little
    out = filt.estop("button", measured=measured)
    assert out.mode == Mode.ESTOP and np.array_equal(out.command, measured)  # at once, at the measured state
    assert [e.cause for e in out.events] == ["estop"]
    for _ in range(20):  # the policy keeps sending; nothing moves
        assert np.array_equal(filt.step(far, measured, T).command, measured)
    assert filt.resume() == (False, "e-stop is latched: reset it first")
    filt.hold("fault")
    filt.stop("fault")
    assert filt.mode == Mode.ESTOP and np.array_equal(filt.step(far, measured, T).command, measured)
    assert filt.reset_estop() and filt.mode == Mode.STOPPED
    assert np.array_equal(filt.step(far, measured, T).command, measured)  # reset alone does not move
    assert filt.resume()[0]
    out = filt.step(far, measured, T)
    assert out.resynced and out.mode == Mode.STARTING
    amax = np.array([j.max_acceleration for j in panda_cfg.joints])
    assert (np.abs(out.command - measured)[:7] <= panda_cfg.start.velocity_scale * amax * T * T + 1e-12).all()
    assert not filt.reset_estop()  # nothing to reset any more


def test_estop_without_a_valid_measurement_holds_the_last_command(filt, panda_cfg):
    moving_fast(filt, panda_cfg)
    last = filt.command
    filt._last_measured = None
    assert np.array_equal(filt.estop("button", measured=[np.nan] * 8).command, last)


@pytest.mark.parametrize("raw, cause", [
    ([np.nan] * 8, "bad_command"),
    (list(REST[:7]), "bad_command"),
    (np.r_[REST[:7], np.inf], "bad_command"),
    (REST * 1e6, "command_out_of_range"),
    (None, "no_command"),
    ("open the gripper", "bad_command"),
])
def test_bad_commands_are_rejected_and_held(filt, panda_cfg, raw, cause):
    far = moving_fast(filt, panda_cfg)
    out = filt.step(raw, filt.command, T)
    assert out.mode == Mode.HOLD and [e.cause for e in out.events] == [cause]
    assert abs(filt._v[0]) < panda_cfg.joints[0].max_velocity  # braking, not following garbage
    for _ in range(40):
        out = filt.step(far, filt.command, T)  # good commands again: still held until the operator resumes
    assert out.mode == Mode.HOLD and filt.at_rest
    ev = filt.step(raw, filt.command, T)
    assert ev.events == []  # no repeated event while held


def test_a_bad_joint_state_holds(filt):
    run_until_running(filt, REST)
    out = filt.step(REST, [np.nan] * 8, T)
    assert out.mode == Mode.HOLD and out.events[0].cause == "joint_state_invalid"


def test_position_is_clamped_to_the_soft_limits(filt, panda_cfg):
    run_until_running(filt, REST)
    target = REST.copy()
    target[6] = panda_cfg.joints[6].max_position + 0.1  # beyond the hard limit, within the reject band
    causes = set()
    for _ in range(300):
        out = filt.step(target, filt.command, T)
        causes |= {e.cause for e in out.events}
    soft_hi = panda_cfg.joints[6].max_position - panda_cfg.joints[6].position_margin
    assert filt.command[6] == pytest.approx(soft_hi, abs=1e-12) and filt.command[6] <= soft_hi
    assert "position_limit" in causes


def test_start_is_refused_outside_the_workspace_or_limits(filt):
    low = REST.copy()
    low[1], low[3] = 0.8, -1.9  # reaches down through the table
    assert filt.fk.positions(low[None, :7])[0, 2] < 0
    filt.resume()
    out = filt.step(low, low, T)
    assert out.mode == Mode.IDLE and out.command is None
    assert out.events[0].cause == "start_refused" and "workspace" in out.events[0].detail
    filt.resume()
    out = filt.step(REST, np.r_[REST[:7], 1.1], T)  # gripper beyond its hard limit
    assert out.mode == Mode.IDLE and "hard limits" in out.events[0].detail


def test_a_command_that_leaves_the_workspace_is_not_applied(filt, panda_cfg):
    run_until_running(filt, REST)
    down = REST.copy()
    down[1], down[3] = 0.8, -1.9
    box_lo, box_hi = np.array(panda_cfg.workspace.min), np.array(panda_cfg.workspace.max)
    causes = []
    for _ in range(150):
        out = filt.step(down, filt.command, T)
        causes += [e.cause for e in out.events]
        p = filt.fk.positions(out.command[None, :7])[0]
        assert (p >= box_lo).all() and (p <= box_hi).all()
    assert "workspace" in causes
    assert filt.fk.positions(filt.command[None, :7])[0, 2] < box_lo[2] + 0.01  # it went as far as allowed
    assert filt.at_rest


def test_events_reach_sinks_serialise_and_survive_a_failing_sink(filt):
    got = []
    filt.events.subscribe(lambda e: 1 / 0)
    filt.events.subscribe(got.append)
    run_until_running(filt, REST)
    out = filt.step([np.nan] * 8, REST, T)
    assert out.mode == Mode.HOLD and filt.events.sink_errors >= 1
    event = got[-1]
    assert isinstance(event, SafetyEvent) and event.cause == "bad_command" and event.mode == "hold"
    d = event.to_dict()
    assert np.isnan(d["raw"]).all() and d["applied"] == pytest.approx(list(REST))
    assert json.loads(json.dumps(d))["cause"] == "bad_command"
    assert [e.cause for e in got[:2]] == ["start", "start_done"]


def test_late_and_early_ticks_are_reported(filt):
    run_until_running(filt, REST)
    assert [e.cause for e in filt.step(REST, REST, 0.05).events] == ["tick_timing"]
    assert [e.cause for e in filt.step(REST, REST, 0.001).events] == ["tick_timing"]
    assert filt.step(REST, REST, T).events == []


def test_an_estop_from_another_thread_is_never_overtaken_by_a_tick(filt, panda_cfg):
    """The ROS e-stop service runs in its own thread: once estop() has returned, every tick started later sends
    its hold (a tick running meanwhile finishes first, it is never interleaved with the e-stop)."""
    far = moving_fast(filt, panda_cfg)
    results, stop = [], threading.Event()

    def control_loop():
        while not stop.is_set():
            started = time_ns()
            results.append((started, filt.step(far, filt.command, T).command))

    worker = threading.Thread(target=control_loop)
    worker.start()
    sleep(0.02)
    hold = filt.estop("service", measured=filt.command).command
    pressed = time_ns()
    sleep(0.02)
    stop.set()
    worker.join()
    after = [c for t, c in results if t > pressed]
    assert after and all(np.array_equal(c, hold) for c in after)
