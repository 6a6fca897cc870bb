"""Watchdog and supervisor with an injected clock (no sleeps): each fault holds the arm within one control
period of the moment it happened, a long hold becomes a controlled stop, and motion resumes only when every input
is fresh again and the operator allows it."""

from __future__ import annotations


import numpy as np
import pytest

from pirl_robot.safety import Mode, SafetySupervisor, Watchdog, WatchdogConfig
from safety_utils import HZ, REST, T, Clock


class Loop:
    """A deploy loop in miniature: the inputs that are 'alive' are reported every tick, then the supervisor runs."""

    def __init__(self, panda_cfg, panda_fk, offset: float = 0.0):
        self.clock = Clock(100.0 + offset)
        self.sup = SafetySupervisor(panda_cfg, HZ, cameras=["wrist"], clock=self.clock, fk=panda_fk)
        self.alive = {"camera", "joints", "policy", "driver"}
        self.target = REST.copy()
        self.sup.watchdog.driver_connected(True)

    def feed(self) -> None:
        w = self.sup.watchdog
        if "camera" in self.alive:
            w.camera_frame("wrist")
        if "joints" in self.alive:
            w.joint_state()
        if "policy" in self.alive:
            w.policy_started()
            w.policy_finished()

    def tick(self):
        self.feed()
        out = self.sup.step(self.target, self.sup.filter.command if self.sup.filter.command is not None else REST, T)
        self.clock.t += T
        return out

    def run_until(self, mode: Mode, max_ticks: int = 1000):
        for _ in range(max_ticks):
            out = self.tick()
            if out.mode == mode:
                return out
        raise AssertionError(f"never reached {mode}; now {self.sup.mode}")

    def start(self) -> None:
        self.feed()
        assert self.sup.resume() == (True, "restarting from the measured state")
        self.run_until(Mode.RUNNING)
        self.target = REST + 0.2 * np.r_[np.ones(7), 0]  # keep the arm moving
        for _ in range(10):
            self.tick()
        assert self.sup.mode == Mode.RUNNING and not self.sup.filter.at_rest


def hold_delay(loop: Loop, fault_time: float, expected: str):
    """Tick until HOLD; return (time of the holding tick - fault time, the event that caused it)."""
    for _ in range(200):
        now = loop.clock.t
        out = loop.tick()
        if out.mode == Mode.HOLD:
            causes = [e.cause for e in out.events]
            assert expected in causes, causes
            v_before = loop.sup.filter._v  # the holding tick already brakes
            return now - fault_time, out, v_before
    raise AssertionError("never held")


@pytest.mark.parametrize("offset", [0.0, 0.003, 0.011, 0.0199])
@pytest.mark.parametrize("fault", ["camera", "joints", "policy_raise", "policy_hang", "driver"])
def test_fault_holds_within_one_control_period(panda_cfg, panda_fk, fault, offset):
    loop = Loop(panda_cfg, panda_fk, offset)
    loop.start()
    w, wd = loop.sup.watchdog, panda_cfg.watchdog
    if fault == "camera":
        loop.alive.discard("camera")
        fault_time, cause = loop.clock.t - T + wd.camera_timeout_s, "camera_stale"  # last frame on the last tick
    elif fault == "joints":
        loop.alive.discard("joints")
        fault_time, cause = loop.clock.t - T + wd.joint_state_timeout_s, "joint_state_stale"
    elif fault == "policy_raise":
        loop.alive.discard("policy")
        loop.clock.t += offset / 2  # between two ticks
        fault_time, cause = loop.clock.t, "policy_error"
        w.policy_failed(RuntimeError("CUDA error: device-side assert"))
    elif fault == "policy_hang":
        loop.alive.discard("policy")
        w.policy_started()  # ... and never returns
        fault_time, cause = loop.clock.t + wd.policy_deadline_s, "policy_deadline"
    else:
        loop.alive.discard("driver")
        loop.clock.t += offset / 2
        fault_time, cause = loop.clock.t, "driver_disconnected"
        w.driver_connected(False, "ros2_control hardware interface lost")
    delay, out, _ = hold_delay(loop, fault_time, cause)
    assert 0 <= delay <= T + 1e-9, delay
    assert any(f.cause == cause for f in loop.sup.faults)


def test_policy_deadline_miss_holds_and_needs_the_operator_after_recovery(panda_cfg, panda_fk):
    loop = Loop(panda_cfg, panda_fk)
    loop.start()
    loop.alive.discard("policy")
    loop.sup.watchdog.policy_started()
    delay, _, _ = hold_delay(loop, loop.clock.t + panda_cfg.watchdog.policy_deadline_s, "policy_deadline")
    assert delay <= T + 1e-9
    loop.sup.watchdog.policy_finished()  # the late result arrives
    loop.alive.add("policy")
    for _ in range(40):
        assert loop.tick().mode == Mode.HOLD  # inputs fine again, but no automatic resume
    assert loop.sup.faults == []
    assert loop.sup.resume()[0]
    out = loop.tick()
    assert out.resynced and out.mode in (Mode.STARTING, Mode.RUNNING)


def test_hold_becomes_a_controlled_stop_after_the_timeout(panda_cfg, panda_fk):
    loop = Loop(panda_cfg, panda_fk)
    loop.start()
    loop.alive.discard("camera")
    loop.run_until(Mode.HOLD)
    held_at = loop.sup.filter.mode_since
    out = loop.run_until(Mode.STOPPED)  # it had braked to rest while holding, so STOPPING lasts no tick
    assert 0 <= loop.clock.t - T - held_at - panda_cfg.watchdog.stop_after_s <= T + 1e-9
    assert [e.cause for e in out.events] == ["hold_timeout", "stopped"]
    assert loop.sup.filter.at_rest


def test_resume_only_with_fresh_inputs_and_operator_consent(panda_cfg, panda_fk):
    loop = Loop(panda_cfg, panda_fk)
    loop.start()
    loop.alive.discard("driver")
    loop.sup.watchdog.driver_connected(False, "USB unplugged")
    loop.run_until(Mode.HOLD)
    ok, why = loop.sup.resume()
    assert not ok and "USB unplugged" in why
    loop.run_until(Mode.STOPPED, max_ticks=200)
    loop.sup.watchdog.driver_connected(True)
    loop.alive.add("driver")
    for _ in range(5):
        assert loop.tick().mode == Mode.STOPPED
    assert loop.sup.resume()[0]
    assert loop.tick().mode == Mode.STARTING


def test_nothing_starts_before_every_input_has_arrived(panda_cfg, panda_fk):
    clock = Clock(100.0)
    sup = SafetySupervisor(panda_cfg, HZ, cameras=["wrist"], clock=clock, fk=panda_fk)
    ok, why = sup.resume()
    assert not ok
    for text in ("camera 'wrist'", "joint states", "policy results", "driver not connected"):
        assert text in why
    assert sup.step(REST, REST, T).command is None


def test_a_fault_during_a_pending_resume_cancels_it(panda_cfg, panda_fk):
    loop = Loop(panda_cfg, panda_fk)
    loop.feed()
    assert loop.sup.resume()[0]
    loop.alive.discard("camera")
    loop.clock.t += panda_cfg.watchdog.camera_timeout_s + 0.001
    out = loop.tick()
    assert out.mode == Mode.IDLE and out.command is None and "camera_stale" in [e.cause for e in out.events]
    loop.alive.add("camera")
    assert loop.tick().mode == Mode.IDLE  # needs a new resume


def test_estop_stays_latched_through_faults_and_resumes(panda_cfg, panda_fk):
    loop = Loop(panda_cfg, panda_fk)
    loop.start()
    measured = loop.sup.filter.command
    out = loop.sup.estop("keyboard", measured=measured)
    assert out.mode == Mode.ESTOP and np.array_equal(out.command, measured)
    loop.alive.discard("camera")
    for _ in range(200):  # faults come and go, hold timeouts pass
        assert np.array_equal(loop.tick().command, measured)
    loop.alive.add("camera")
    loop.tick()
    assert loop.sup.resume() == (False, "e-stop is latched: reset it first")
    assert loop.sup.mode == Mode.ESTOP
    assert loop.sup.reset_estop()
    assert loop.sup.resume()[0] and loop.tick().mode == Mode.STARTING


def test_watchdog_reports_each_fault_with_its_onset():
    clock = Clock(0.0)
    cfg = WatchdogConfig(camera_timeout_s=0.1, joint_state_timeout_s=0.05, policy_deadline_s=0.3,
                         policy_stale_s=0.5, stop_after_s=1.0)
    w = Watchdog(cfg, cameras=["wrist", "scene"], clock=clock)
    assert {f.cause for f in w.check()} == {"camera_stale", "joint_state_stale", "policy_stale", "driver_disconnected"}
    w.camera_frame("wrist"), w.camera_frame("scene"), w.joint_state(), w.policy_finished(), w.driver_connected(True)
    assert w.check() == []
    clock.t = 0.08
    w.camera_frame("wrist"), w.joint_state()
    clock.t = 0.12
    (f,) = w.check()
    assert (f.cause, f.source, f.since) == ("camera_stale", "scene", pytest.approx(0.1))
    with pytest.raises(KeyError, match="unknown camera 'side'"):
        w.camera_frame("side")


def test_a_fault_detected_by_the_caller_holds_and_blocks_resume(panda_cfg, panda_fk):
    loop = Loop(panda_cfg, panda_fk)
    loop.start()
    loop.feed()
    out = loop.sup.step(loop.target, loop.sup.filter.command, T, fault=TimeoutError("joint state 120 ms old"))
    assert out.mode == Mode.HOLD and out.events[0].cause == "input_fault"
    assert "TimeoutError: joint state 120 ms old" in out.events[0].detail
    ok, why = loop.sup.resume()
    assert not ok and "120 ms" in why
    loop.tick()  # a tick without the fault
    assert loop.sup.resume()[0]


def test_a_loop_with_its_own_input_checks_can_watch_only_the_rest(panda_cfg, panda_fk):
    clock = Clock(100.0)
    sup = SafetySupervisor(panda_cfg, HZ, cameras=["wrist"], clock=clock, fk=panda_fk, watch=("policy",))
    sup.watchdog.policy_finished()
    assert sup.resume()[0]  # no camera, joint state or driver reports needed
    assert sup.step(REST, REST, T).mode in (Mode.STARTING, Mode.RUNNING)
    clock.t += panda_cfg.watchdog.policy_stale_s + T  # the policy is still watched
    assert sup.step(REST, REST, T).mode == Mode.HOLD
    with pytest.raises(ValueError, match=r"unknown watchdog inputs \['camera'\]"):
        Watchdog(panda_cfg.watchdog, watch=("camera",))
