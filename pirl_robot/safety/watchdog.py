"""Freshness of everything the control loop depends on, checked once per tick against an injectable clock.

The deploy node reports inputs as they arrive (`camera_frame`, `joint_state`, `policy_started/finished/failed`,
`driver_connected`); `check` lists what is wrong right now. An input that has never arrived counts as stale, so
nothing can start before every input has been seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from pirl_robot.safety.config import WatchdogConfig


@dataclass(frozen=True, slots=True)
class Fault:
    # camera_stale | joint_state_stale | policy_error | policy_deadline | policy_stale | driver_disconnected
    cause: str
    source: str    # camera name, "joint_states", "policy" or "driver"
    detail: str
    since: float   # when the input became faulty (clock time); -inf when it has never been good


WATCHABLE = ("cameras", "joint_states", "policy", "driver")


class Watchdog:
    """`watch`: the inputs checked here (all by default). A loop that already checks some inputs itself can leave
    them out and pass its own findings to `SafetySupervisor.step(..., fault=...)` instead."""

    def __init__(self, cfg: WatchdogConfig, cameras: Iterable[str] = (), clock: Callable[[], float] = time.monotonic,
                 watch: Iterable[str] = WATCHABLE):
        self.cfg, self.clock = cfg, clock
        self.watch = frozenset(watch)
        if not self.watch <= set(WATCHABLE):
            raise ValueError(f"unknown watchdog inputs {sorted(self.watch - set(WATCHABLE))}; known: {WATCHABLE}")
        self.cameras = tuple(cameras) if "cameras" in self.watch else ()
        self._frames: dict[str, float] = {}
        self._joint_state: float | None = None
        self._policy_ok: float | None = None          # last good result
        self._policy_inflight: float | None = None    # start of the call now running
        self._policy_error: tuple[float, str] | None = None
        self._driver: tuple[bool, float, str] = (False, -float("inf"), "driver not connected yet")

    # --- inputs (stamp: the clock time of arrival; default now) ----------------------------------------------
    def camera_frame(self, name: str, stamp: float | None = None) -> None:
        if "cameras" not in self.watch:
            return
        if name not in self.cameras:
            raise KeyError(f"unknown camera {name!r}; watched: {list(self.cameras)}")
        self._frames[name] = self._now(stamp)

    def joint_state(self, stamp: float | None = None) -> None:
        self._joint_state = self._now(stamp)

    def policy_started(self, stamp: float | None = None) -> None:
        self._policy_inflight = self._now(stamp)

    def policy_finished(self, stamp: float | None = None) -> None:
        self._policy_inflight, self._policy_error = None, None
        self._policy_ok = self._now(stamp)

    def policy_failed(self, error: BaseException | str, stamp: float | None = None) -> None:
        self._policy_inflight = None
        self._policy_error = (self._now(stamp), f"{type(error).__name__}: {error}" if isinstance(error, BaseException)
                              else str(error))

    def driver_connected(self, connected: bool, detail: str = "", stamp: float | None = None) -> None:
        if connected != self._driver[0]:
            self._driver = (connected, self._now(stamp), detail)

    # --- the check ---------------------------------------------------------------------------------------------
    def check(self, now: float | None = None) -> list[Fault]:
        now = self._now(now)
        c, faults = self.cfg, []
        for cam in self.cameras:
            faults += self._stale("camera_stale", cam, f"camera {cam!r}", self._frames.get(cam),
                                  c.camera_timeout_s, now)
        if "joint_states" in self.watch:
            faults += self._stale("joint_state_stale", "joint_states", "joint states", self._joint_state,
                                  c.joint_state_timeout_s, now)
        if "policy" in self.watch:
            faults += self._policy_faults(now)
        connected, since, detail = self._driver
        if "driver" in self.watch and not connected:
            faults.append(Fault("driver_disconnected", "driver", detail or "driver disconnected", since))
        return faults

    def _policy_faults(self, now: float) -> list[Fault]:
        c, faults = self.cfg, []
        if self._policy_error is not None:
            since, message = self._policy_error
            faults.append(Fault("policy_error", "policy", f"policy raised {message}", since))
        running = None if self._policy_inflight is None else now - self._policy_inflight
        if running is not None and running > c.policy_deadline_s:
            faults.append(Fault("policy_deadline", "policy", f"policy call running for {running:.3f} s "
                                f"(deadline {c.policy_deadline_s} s)", self._policy_inflight + c.policy_deadline_s))
        faults += self._stale("policy_stale", "policy", "policy results", self._policy_ok, c.policy_stale_s, now)
        return faults

    @staticmethod
    def _stale(cause: str, source: str, what: str, last: float | None, timeout: float, now: float) -> list[Fault]:
        if last is None:
            return [Fault(cause, source, f"no {what} received yet", -float("inf"))]
        if now - last > timeout:
            detail = f"{what}: nothing for {now - last:.3f} s (timeout {timeout} s)"
            return [Fault(cause, source, detail, last + timeout)]
        return []

    def _now(self, stamp: float | None) -> float:
        return self.clock() if stamp is None else stamp
