"""The safety filter: every command on its way to an arm driver passes `SafetyFilter.step` once per control tick.

    filt = SafetyFilter(cfg, control_hz=50)
    filt.resume()                                   # operator: allow motion (starts from the measured state)
    out = filt.step(policy_action, measured_q, dt)  # every tick
    if out.command is not None: driver.send(out.command)

Modes: IDLE -> (resume) STARTING -> RUNNING; a bad input -> HOLD; `stop` -> STOPPING -> STOPPED; `estop` -> ESTOP
(latched until `reset_estop`, then STOPPED). Leaving HOLD/STOPPED/IDLE always takes an operator `resume` and
restarts from the measured state with a smooth start.

Limits hold on the command stream at the nominal period T = 1/control_hz (see limiter.py): every applied command
is inside the soft position limits (or, right after a start in the margin band, no further out than before), its
per-tick change is within max_step and max_velocity*T, its change of velocity within max_acceleration*T, and the
end effector of it and of its full braking stop is inside the workspace box. Jerk limits are kept where they fit
with those (never while braking). An e-stop is the one exception: it holds at the measured state at once.

Threads: `lock` (re-entrant) is the one lock of the safety layers; every public method takes it, and
SafetySupervisor and the deploy node's safety stage hand out this same object as their `lock`.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable

import numpy as np

from pirl_robot.safety import limiter
from pirl_robot.safety.limiter import all_of, any_of
from pirl_robot.safety.config import SafetyConfig
from pirl_robot.safety.events import EventBus, SafetyEvent, as_vector
from pirl_robot.safety.kinematics import EndEffectorFK
from pirl_robot.safety.workspace import WorkspaceCheck

START_SLACK = 0.01  # a start from a reading this far past a hard limit (x range width) begins at the limit
LOOK_AHEAD = np.array([3.0, 6.0, 10.0, 15.0, 20.0])  # ticks ahead at this velocity: anchors for the box check
WORKSPACE_SCALES = (1.0, 0.5, 0.25)  # candidates tried in turn (fraction of the way from braking to the command)


class Mode(StrEnum):
    IDLE = "idle"            # not started, or a start was refused: nothing is sent
    STARTING = "starting"    # smooth start: limits scaled down until the arm has caught up with the policy
    RUNNING = "running"
    HOLD = "hold"            # brakes within limits, then holds position; the operator decides what next
    STOPPING = "stopping"    # controlled stop: brakes within limits ...
    STOPPED = "stopped"      # ... and stays at rest
    ESTOP = "estop"          # latched hold at the measured state


FOLLOWING = (Mode.STARTING, Mode.RUNNING)  # the command follows the policy (limited)
BRAKING = (Mode.HOLD, Mode.STOPPING)  # the command brakes to rest
IN_MOTION = FOLLOWING + BRAKING  # the filter still streams commands that may move the arm


@dataclass(slots=True)
class TickResult:
    command: np.ndarray | None  # send this to the driver; None: send nothing (never started)
    mode: Mode
    events: list[SafetyEvent] = field(default_factory=list)
    resynced: bool = False      # the reference was re-taken from the measured state this tick (a (re)start)


def _locked(method):
    """Operator calls (e-stop from a ROS service thread, a keyboard) and the control tick never interleave."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapper


class SafetyFilter:
    def __init__(self, cfg: SafetyConfig, control_hz: float, clock: Callable[[], float] = time.monotonic,
                 events: EventBus | None = None, fk: EndEffectorFK | None = None):
        if not control_hz > 0:
            raise ValueError(f"control_hz must be positive, got {control_hz}")
        self.cfg, self.period, self.clock = cfg, 1.0 / control_hz, clock
        self.events = events or EventBus()
        self.lock = threading.RLock()  # hold it around step + send so that an e-stop cannot land in between
        self.names = cfg.entry_names
        self.n, self.n_arm = len(self.names), len(cfg.joints)
        lim = cfg.vectors()
        self.hard_lo, self.hard_hi = lim["hard_lo"], lim["hard_hi"]
        self.soft_lo, self.soft_hi = lim["soft_lo"], lim["soft_hi"]
        self.vmax = np.minimum(lim["max_velocity"], lim["max_step"] / self.period)  # the step cap as a speed
        self.amax, self.jmax = lim["max_acceleration"], lim["max_jerk"]
        self._no_velocity = np.zeros(self.n)
        self._arm_tolerance = cfg.start.tolerance
        width = self.hard_hi - self.hard_lo
        width = np.where(np.isfinite(width), width, 0.0)  # entries without position limits: no bands
        band = cfg.reject_beyond * width
        self.reject_lo, self.reject_hi = self.hard_lo - band, self.hard_hi + band
        self.start_slack = START_SLACK * width
        ws = cfg.workspace
        if ws and fk is None:
            fk = EndEffectorFK(ws.urdf, ws.ee_link, [j.urdf_joint for j in cfg.joints])
        self.fk = fk if ws else None
        self.workspace = WorkspaceCheck(fk, ws.min, ws.max) if ws else None  # FK calls only where needed
        self.mode, self.mode_since = Mode.IDLE, clock()
        self._q: np.ndarray | None = None        # last applied command
        self._v = np.zeros(self.n)               # its velocity (per tick / T)
        self._a = np.zeros(self.n)               # and acceleration
        self._resume_pending = False
        self._last_measured: np.ndarray | None = None
        self._last_target: np.ndarray | None = None  # previous clamped policy command (its velocity shapes approach)
        self._pending: list[tuple[str, str]] = []  # (cause, detail) raised between ticks, reported with the next

    # --- operator and supervisor ------------------------------------------------------------------------------
    @_locked
    def resume(self) -> tuple[bool, str]:
        """Allow motion: (re)start from the measured state, once at rest. Refused while the e-stop is latched."""
        if self.mode == Mode.ESTOP:
            return False, "e-stop is latched: reset it first"
        if self.mode in FOLLOWING:
            return True, f"already {self.mode}"
        self._resume_pending = True
        return True, "restarting from the measured state" + (" once at rest" if self.mode in BRAKING else "")

    @_locked
    def hold(self, cause: str, detail: str = "") -> None:
        """Brake within limits and hold (a stale input, a policy fault). Only a `resume` moves on."""
        self._resume_pending = False
        if self.mode in FOLLOWING:
            self._set_mode(Mode.HOLD, cause, detail)

    @_locked
    def stop(self, cause: str, detail: str = "") -> None:
        """Controlled stop: brake within limits to rest, then STOPPED."""
        self._resume_pending = False
        if self.mode in FOLLOWING or self.mode == Mode.HOLD:
            self._set_mode(Mode.STOPPING, cause, detail)

    @_locked
    def report(self, cause: str, detail: str = "") -> None:
        """Record an event (e.g. a watchdog fault) with the next tick's policy action and applied command."""
        self._pending.append((cause, detail))

    @_locked
    def estop(self, detail: str = "", measured: Any = None) -> TickResult:
        """Latch the e-stop and cancel the active command at once: the returned command holds the measured state
        (clipped to the hard limits), or the last command if no valid measurement is known. Send it right away."""
        meas, _ = self._as_state(measured)
        meas = self._last_measured if meas is None else meas
        if meas is not None:
            self._q = np.clip(meas, self.hard_lo, self.hard_hi)
        self._v, self._a = np.zeros(self.n), np.zeros(self.n)
        self._resume_pending = False
        self._set_mode(Mode.ESTOP, "estop", detail)
        return TickResult(self._command(), self.mode, self._flush(None))

    @_locked
    def reset_estop(self) -> bool:
        """The only way out of ESTOP; leads to STOPPED (or IDLE), from where a `resume` restarts."""
        if self.mode != Mode.ESTOP:
            return False
        self._set_mode(Mode.STOPPED if self._q is not None else Mode.IDLE, "estop_reset", "")
        self._flush(None)
        return True

    @property
    def command(self) -> np.ndarray | None:
        return self._command()

    @property
    def at_rest(self) -> bool:
        return not any_of(self._v)

    # --- the control tick ---------------------------------------------------------------------------------------
    @_locked
    def step(self, action: Any, measured: Any, dt: float | None = None) -> TickResult:
        """One control tick: the policy's command and the measured joint state (both in config entry order) ->
        the command to send. `dt` (time since the last tick) is only checked; limits use the nominal period."""
        meas, meas_problem = self._as_state(measured)
        if meas is not None:
            self._last_measured = meas
        if dt is not None and not 0.5 * self.period <= dt <= 1.5 * self.period:
            self._pending.append(("tick_timing", f"dt {dt:.4f} s, nominal {self.period:.4f} s"))
        resynced = False
        if self._resume_pending and (self.mode in (Mode.IDLE, Mode.STOPPED) or (self.mode in BRAKING and self.at_rest)):
            resynced = self._start(meas, meas_problem)
        if self.mode in FOLLOWING:
            if meas is None:
                self._set_mode(Mode.HOLD, "joint_state_invalid", meas_problem)
            else:
                target, problem = self._check_command(action)
                if problem:
                    self._set_mode(Mode.HOLD, *problem)
                else:
                    self._track(target)
        if self.mode in BRAKING:
            self._advance(limiter.braking_velocity(self._v, self.amax, self.period))
            if self.mode == Mode.STOPPING and self.at_rest:
                self._set_mode(Mode.STOPPED, "stopped", "at rest")
        return TickResult(self._command(), self.mode, self._flush(action), resynced)

    # --- internals ----------------------------------------------------------------------------------------------
    def _as_state(self, x: Any) -> tuple[np.ndarray | None, str]:
        if x is None:
            return None, "no joint state"
        v = as_vector(x)
        if v is None or np.shape(x) != (self.n,):
            return None, f"joint state of shape {np.shape(x)}, expected ({self.n},)"
        if not all_of(np.isfinite(v)):
            return None, f"joint state has NaN/inf in {self._names(~np.isfinite(v))}"
        far = (v < self.reject_lo) | (v > self.reject_hi)
        if any_of(far):
            return None, f"joint state far outside the limits in {self._names(far)}"
        return v, ""

    def _check_command(self, action: Any) -> tuple[np.ndarray | None, tuple[str, str] | None]:
        if action is None:
            return None, ("no_command", "no policy command this tick")
        x = as_vector(action)
        if x is None or np.shape(action) != (self.n,):
            what = np.shape(action) if x is not None else type(action).__name__
            return None, ("bad_command", f"command of shape {what}, "
                                         f"expected ({self.n},) = {list(self.names)}")
        bad = ~np.isfinite(x)
        if any_of(bad):
            return None, ("bad_command", f"NaN/inf in {self._names(bad)}")
        far = (x < self.reject_lo) | (x > self.reject_hi)
        if any_of(far):
            return None, ("command_out_of_range", f"{self._names(far)} beyond the limits by more than "
                                                  f"{self.cfg.reject_beyond:g} x their range")
        target = np.minimum(np.maximum(x, self.soft_lo), self.soft_hi)  # np.clip, without its Python layers
        clamped = target != x
        if any_of(clamped):
            self._pending.append(("position_limit", f"clamped to the soft limits: {self._names(clamped)}"))
        return target, None

    def _start(self, meas: np.ndarray | None, meas_problem: str) -> bool:
        self._resume_pending = False
        problem = meas_problem
        if meas is not None:
            outside = (meas < self.hard_lo - self.start_slack) | (meas > self.hard_hi + self.start_slack)
            meas = np.clip(meas, self.hard_lo, self.hard_hi)  # a reading just past a limit starts at the limit
            if outside.any():
                problem = f"measured state outside the hard limits in {self._names(outside)}"
            elif self.fk is not None and not self._in_box(meas[None]).all():
                problem = "measured end effector outside the workspace box; move the arm inside first"
        if problem:
            self._pending.append(("start_refused", problem))
            return False
        self._q, self._v, self._a = meas, np.zeros(self.n), np.zeros(self.n)
        self._last_target = None
        self._set_mode(Mode.STARTING, "start", "ramping from the measured state")
        return True

    def _track(self, target: np.ndarray) -> None:
        q, starting = self._q, self.mode == Mode.STARTING
        vmax, amax, jmax = self.vmax, self.amax, self.jmax
        if starting:
            s = self.cfg.start.velocity_scale
            vmax, amax, jmax = s * vmax, s * amax, s * jmax
        lo, hi = np.minimum(self.soft_lo, q), np.maximum(self.soft_hi, q)  # a start in the margin band may stay there
        target_velocity = (self._no_velocity if self._last_target is None
                           else (target - self._last_target) / self.period)
        self._last_target = target
        intervals = limiter.velocity_intervals(q, self._v, self._a, lo, hi, vmax, amax, jmax, self.period, target,
                                               target_velocity)
        v, binding = limiter.clip_by_priority((target - q) / self.period, intervals)
        if self.fk is not None:
            v = self._fit_workspace(v)
        self._advance(v)
        if starting:
            # arm joints only: the gripper's ramp need not end for the arm to leave the start (the gripper stays
            # inside its own range, speed and step limits all along)
            if all_of(np.abs(self._q[: self.n_arm] - target[: self.n_arm]) <= self._arm_tolerance):
                self._set_mode(Mode.RUNNING, "start_done", "caught up with the policy")
            return
        for name, mask in binding.items():  # only the limits that bound
            self._pending.append((name, self._names(mask)))

    def _fit_workspace(self, v: np.ndarray) -> np.ndarray:
        """The command if it and its full braking stop keep the end effector in the box, else a scaled-back one,
        else braking (which follows the stop checked on the previous tick, so it is always inside)."""
        plan = limiter.braking_plan(self._q + v * self.period, v, self.amax, self.period)
        if all_of(self.workspace.proven_inside(plan[:, : self.n_arm])):
            return v  # the common case: far enough inside, no FK call
        # at most one FK call per tick: every candidate's stop at once, plus where the arm is heading
        v_brake = limiter.braking_velocity(self._v, self.amax, self.period)
        cands = [v] + [v_brake + s * (v - v_brake) for s in WORKSPACE_SCALES[1:]]
        plans = [plan] + [limiter.braking_plan(self._q + c * self.period, c, self.amax, self.period)
                          for c in cands[1:]]
        ahead = self._q[None, : self.n_arm] + LOOK_AHEAD[:, None] * self.period * v[None, : self.n_arm]
        inside = np.split(self.workspace.inside(np.concatenate(plans)[:, : self.n_arm], ahead),
                          np.cumsum([len(p) for p in plans])[:-1])
        for s, c, ok in zip(WORKSPACE_SCALES, cands, inside):
            if ok.all():
                if s < 1.0:
                    self._pending.append(("workspace", f"scaled back to {s:g} of the step"))
                return c
        self._pending.append(("workspace", "braking: the command would leave the workspace box"))
        return v_brake

    def _in_box(self, q: np.ndarray) -> np.ndarray:
        return self.workspace.inside(q[:, : self.n_arm])

    def _advance(self, v: np.ndarray) -> None:
        q = np.minimum(np.maximum(self._q + v * self.period, self.hard_lo), self.hard_hi)  # rounding guard only
        v_new = (q - self._q) / self.period  # braking ends on exact zeros (limiter.braking_velocity)
        self._a = (v_new - self._v) / self.period
        self._q, self._v = q, v_new

    def _set_mode(self, mode: Mode, cause: str, detail: str) -> None:
        if mode != self.mode:
            self.mode, self.mode_since = mode, self.clock()
        self._pending.append((cause, detail))

    def _command(self) -> np.ndarray | None:
        return None if self._q is None or self.mode == Mode.IDLE else self._q.copy()

    def _flush(self, action: Any) -> list[SafetyEvent]:
        if not self._pending:
            return []
        now, raw_vec, applied = self.clock(), as_vector(action) if action is not None else None, self._command()
        out = [SafetyEvent(now, cause, raw_vec, applied, detail, str(self.mode)) for cause, detail in self._pending]
        self._pending.clear()
        for e in out:
            self.events.emit(e)
        return out

    def _names(self, mask: np.ndarray) -> str:
        return ", ".join(n for n, m in zip(self.names, mask) if m)
