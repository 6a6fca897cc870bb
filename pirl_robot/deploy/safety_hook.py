"""The one place where every command passes the safety filter before it reaches an arm.

The control loop (deploy/control_loop.py) calls `stage.step(...)` exactly once per control tick with the policy's
action (or None: no chunk yet, an underrun, not executing), the measured joint state and this tick's input fault,
if any. What it returns (in command units) is what gets sent; None sends nothing (the arm's controller keeps its
last target). Both stages speak the safety layers' one verb set: step, resume, stop, estop, reset_estop; the loop
holds `stage.lock` (the safety filter's, the one lock of the safety layers) around step + send and estop + send.

`SupervisedSafety` runs pirl_robot.safety's SafetySupervisor (limits, smooth start, controlled stop, watchdog,
latching e-stop; docs/safety.md) in the policy's action space: the measured command joints are mapped back into
action units (CommandMap.inverse) for it, and its output is mapped to command units after it.
`UnfilteredPassThrough` (safety_config: unfiltered) enforces no limits: for simulated arms and tests only; the
node warns and /diagnostics says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pirl_robot.drivers.arms.base import JointSample

UNFILTERED = "unfiltered"


@dataclass
class SafetyOutcome:
    command: np.ndarray | None  # command units, ready for the arm driver
    events: list[dict] = field(default_factory=list)
    mode: str = ""


class UnfilteredPassThrough:
    """NOT a safety filter: forwards the policy's actions unchanged and sends nothing on a fault."""

    name = "UNFILTERED pass-through (no limits enforced)"
    enforcing = False

    def __init__(self, command_map):
        self.command_map = command_map
        self.estopped = False
        self.lock = threading.RLock()  # the loop holds it around step + send, and around estop + send

    def step(self, action, joints, fault, dt) -> SafetyOutcome:
        if fault is not None or action is None or self.estopped:
            return SafetyOutcome(None, [{"cause": f"fault: {fault}"}] if fault is not None else [], "pass")
        return SafetyOutcome(self.command_map(action), [], "pass")

    def resume(self) -> tuple[bool, str]:
        return (False, "e-stop is latched: reset it first") if self.estopped else (True, "")

    def stop(self) -> None:
        pass

    def estop(self, joints) -> np.ndarray | None:
        self.estopped = True
        return None if joints is None else joints.pick(self.command_map.names)

    def reset_estop(self) -> bool:
        was, self.estopped = self.estopped, False
        return was

    def drain_events(self) -> list[dict]:
        return []

    def observed(self, joints=None, frames=None) -> None:
        pass

    def policy(self, event: str, error: str = "") -> None:
        pass

    def driver(self, connected: bool, detail: str = "") -> None:
        pass


class SupervisedSafety:
    enforcing = True

    def __init__(self, supervisor, command_map, source: str):
        self.sup, self.command_map = supervisor, command_map
        self.name = f"pirl_robot.safety ({source})"
        self._resume_wanted = False
        self._events: list[dict] = []
        supervisor.events.subscribe(lambda e: self._events.append(e.to_dict()))  # ticks, e-stops, resets

    @property
    def lock(self):
        """The supervisor's (re-entrant) lock: the loop holds it around step + send and around estop + send."""
        return self.sup.lock

    def drain_events(self) -> list[dict]:
        out, self._events = self._events, []
        return out

    def measured(self, joints: JointSample | None) -> np.ndarray | None:
        if joints is None:
            return None
        try:
            return self.command_map.inverse(joints.pick(self.command_map.names))
        except Exception:  # a joint missing from the message: the filter treats it as no valid measurement
            return None

    def step(self, action, joints, fault, dt) -> SafetyOutcome:
        with self.sup.lock:
            if self._resume_wanted and fault is None:
                ok, _ = self.sup.resume()  # refused until every watched input is fresh: retried each tick
                self._resume_wanted = not ok
            res = self.sup.step(action, self.measured(joints), dt, fault)
        cmd = None if res.command is None else self.command_map(res.command)
        return SafetyOutcome(cmd, self.drain_events(), str(res.mode))

    def resume(self) -> tuple[bool, str]:
        """Accepted unless the e-stop is latched; the supervisor resumes on the first tick with fresh inputs."""
        if str(self.sup.mode) == "estop":
            return False, "e-stop is latched: reset it first"
        self._resume_wanted = True
        return True, ""

    def stop(self) -> None:
        self._resume_wanted = False
        self.sup.stop("operator_stop", "stop requested")

    def estop(self, joints) -> np.ndarray | None:
        self._resume_wanted = False
        res = self.sup.estop("e-stop pressed", self.measured(joints))
        return None if res.command is None else self.command_map(res.command)

    def reset_estop(self) -> bool:
        return self.sup.reset_estop()

    def observed(self, joints: JointSample | None = None, frames: dict | None = None) -> None:
        if joints is not None:
            self.sup.watchdog.joint_state(joints.stamp)
        for name, frame in (frames or {}).items():
            self.sup.watchdog.camera_frame(name, frame.stamp)

    def policy(self, event: str, error: str = "") -> None:
        w = self.sup.watchdog
        {"started": w.policy_started, "finished": w.policy_finished}.get(event, lambda: w.policy_failed(error))()

    def driver(self, connected: bool, detail: str = "") -> None:
        self.sup.watchdog.driver_connected(connected, detail)


def resolve_path(path: str) -> Path:
    """A path as given, else relative to the repository root (where configs/ lives)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return Path(__file__).resolve().parents[2] / p


def make_safety_stage(safety_config: str, spec, command_map):
    """The stage for `safety_config`: a robot yaml with a `safety:` section, or 'unfiltered'."""
    if safety_config == UNFILTERED:
        return UnfilteredPassThrough(command_map)
    if not safety_config:
        raise ValueError("safety_config is empty: give a robot yaml with a 'safety:' section (e.g. "
                         "configs/robot/panda.yaml), or 'unfiltered' for a simulated arm or a test")
    from pirl_robot.safety import SafetySupervisor, load_safety_config

    path = resolve_path(safety_config)
    cfg = load_safety_config(path, spec=spec)  # SafetyConfigError (a ValueError) names the offending field
    sup = SafetySupervisor(cfg, spec.control_hz, cameras=[c.name for c in spec.cameras])
    return SupervisedSafety(sup, command_map, str(safety_config))
