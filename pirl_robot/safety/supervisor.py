"""The one object a deploy loop talks to: watchdog + safety filter + operator controls (resume, e-stop).

    guard = SafetySupervisor(load_safety_config("configs/robot/panda.yaml", spec), spec.control_hz,
                             cameras=[c.name for c in spec.cameras])
    guard.events.subscribe(recorder.on_safety_event)
    guard.watchdog.camera_frame("wrist"); guard.watchdog.joint_state(); guard.watchdog.policy_finished(); ...
    guard.watchdog.driver_connected(True)
    guard.resume()                                    # operator: allow motion (refused while inputs are stale)
    with guard.lock:                                  # every control tick: step + send as one
        out = guard.step(action, measured_q, dt)
        if out.command is not None: driver.send(out.command)

Fault handling: any watchdog fault while moving -> HOLD on that very tick (brake within limits, then hold);
a HOLD that lasts `watchdog.stop_after_s` -> controlled stop; motion resumes only on an operator `resume()` with
every input fresh, restarting smoothly from the measured state. The e-stop latches until `reset_estop()`.

Threads: `lock` is the filter's (re-entrant) lock, the one lock of the safety layers; a caller that sends commands
holds it around step + send and around estop + send, so an e-stop never lands between a tick's command and its
sending.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from pirl_robot.safety.config import SafetyConfig
from pirl_robot.safety.events import EventBus
from pirl_robot.safety.filter import FOLLOWING, Mode, SafetyFilter, TickResult
from pirl_robot.safety.kinematics import EndEffectorFK
from pirl_robot.safety.watchdog import WATCHABLE, Fault, Watchdog


class SafetySupervisor:
    """Watchdog + safety filter + operator controls; `step` once per control period (see the module docstring)."""

    def __init__(self, cfg: SafetyConfig, control_hz: float, cameras: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic, fk: EndEffectorFK | None = None,
                 watch: Iterable[str] = WATCHABLE):
        self.cfg, self.clock = cfg, clock
        self.events = EventBus()
        self.filter = SafetyFilter(cfg, control_hz, clock, self.events, fk)
        self.watchdog = Watchdog(cfg.watchdog, cameras, clock, watch)
        self.lock = self.filter.lock  # hold it around step + send and around estop + send
        self.faults: list[Fault] = []
        self._caller_fault: Fault | None = None  # reported by the caller on the last tick
        self._seen: set[tuple[str, str]] = set()  # (cause, source) of the faults already reported

    @property
    def mode(self) -> Mode:
        return self.filter.mode

    def step(self, action: Any, measured: Any, dt: float | None = None,
             fault: str | BaseException | None = None) -> TickResult:
        """One control tick: check inputs, then filter the policy's command (see SafetyFilter.step).
        `fault`: an input problem the caller detected itself this tick (e.g. its own stale-data check); it is
        handled like a watchdog fault (cause ``input_fault``) and blocks `resume` until a tick without it."""
        with self.lock:
            return self._step(action, measured, dt, fault)

    def _step(self, action: Any, measured: Any, dt: float | None, fault: str | BaseException | None) -> TickResult:
        now = self.clock()
        self._caller_fault = None if fault is None else Fault(
            "input_fault", "caller", f"{type(fault).__name__}: {fault}" if isinstance(fault, BaseException)
            else str(fault), now)
        self.faults = self.watchdog.check(now) + ([self._caller_fault] if self._caller_fault else [])
        active = {(f.cause, f.source) for f in self.faults}
        for f in self.faults:
            if (f.cause, f.source) not in self._seen:
                if self.filter.mode in FOLLOWING:
                    self.filter.hold(f.cause, f.detail)  # reports the event and brakes on this tick
                else:
                    self.filter.report(f.cause, f.detail)
        self._seen = active
        if self.faults:
            self.filter.hold(self.faults[0].cause, self.faults[0].detail)  # also cancels a pending resume
        if self.filter.mode == Mode.HOLD and now - self.filter.mode_since >= self.cfg.watchdog.stop_after_s:
            self.filter.stop("hold_timeout", f"held for {self.cfg.watchdog.stop_after_s} s")
        return self.filter.step(action, measured, dt)

    # --- operator ---------------------------------------------------------------------------------------------
    def resume(self) -> tuple[bool, str]:
        """Allow motion again. Refused while any input is stale or the e-stop is latched."""
        with self.lock:
            faults = self.watchdog.check() + ([self._caller_fault] if self._caller_fault else [])
            if faults:
                return False, "inputs not ready: " + "; ".join(f.detail for f in faults)
            return self.filter.resume()

    def stop(self, cause: str = "operator_stop", detail: str = "stop requested") -> None:
        """Controlled stop: brake within limits to rest."""
        self.filter.stop(cause, detail)

    def estop(self, detail: str = "", measured: Any = None) -> TickResult:
        """Latch the e-stop; the returned command (hold at the measured state) should be sent at once."""
        return self.filter.estop(detail, measured)

    def reset_estop(self) -> bool:
        return self.filter.reset_estop()
