"""The policy spec: the contract between a policy and whatever feeds it (simulator, robot, replay).

One spec travels with a policy from training to the exported bundle to the deploy node; the robot side checks
its own config against it, so a mismatch (a missing camera, a different joint order) is refused up front
instead of producing silently wrong commands.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ACTION_TYPES = ("joint_pos", "joint_delta", "ee_delta_pos", "ee_delta_pose")


class SpecError(ValueError):
    """A spec is malformed, or two specs that must agree do not."""


@dataclass(frozen=True)
class CameraSpec:
    name: str
    height: int
    width: int

    def __post_init__(self) -> None:
        if not self.name or self.height <= 0 or self.width <= 0:
            raise SpecError(f"camera needs a name and positive size, got {self}")


@dataclass(frozen=True)
class PolicySpec:
    """What a policy consumes and produces.

    state_names / action_names: the order of every entry of the state and action vectors.
    action_type: how the environment or robot interprets an action (``joint_pos``: absolute joint targets).
    action_state_index: for each action entry, the index of the state entry it commands (or -1). Used by the
      delta/absolute action transforms and by the safety filter to compare a command with the measured state.
    delta_action_mask: action entries the model predicts relative to the current state (openpi's DeltaActions).
    chunk_size: actions per predicted chunk; exec_horizon: how many of them run before the next inference.
    """

    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_type: str = "joint_pos"
    action_units: tuple[str, ...] = ()
    action_state_index: tuple[int, ...] = ()
    delta_action_mask: tuple[bool, ...] = ()
    cameras: tuple[CameraSpec, ...] = ()
    control_hz: float = 20.0
    chunk_size: int = 8
    exec_horizon: int = 8
    instruction: str = ""
    robot: str = "panda"

    def __post_init__(self) -> None:
        a = len(self.action_names)
        if not self.state_names and not self.cameras:
            raise SpecError("a policy needs a state vector, a camera, or both")
        if a == 0:
            raise SpecError("action_names is empty")
        if self.action_type not in ACTION_TYPES:
            raise SpecError(f"action_type {self.action_type!r} not in {ACTION_TYPES}")
        for name, seq in (("action_units", self.action_units), ("action_state_index", self.action_state_index),
                          ("delta_action_mask", self.delta_action_mask)):
            if seq and len(seq) != a:
                raise SpecError(f"{name} has {len(seq)} entries, action_names has {a}")
        for i in self.action_state_index:
            if not -1 <= i < len(self.state_names):
                raise SpecError(f"action_state_index {i} outside the state vector ({len(self.state_names)})")
        for j, is_delta in enumerate(self.delta_action_mask):
            if is_delta and (not self.action_state_index or self.action_state_index[j] < 0):
                raise SpecError(f"delta action {self.action_names[j]!r} has no state entry to be relative to")
        if not 1 <= self.exec_horizon <= self.chunk_size:
            raise SpecError(f"exec_horizon {self.exec_horizon} must be in [1, chunk_size={self.chunk_size}]")
        if self.control_hz <= 0:
            raise SpecError("control_hz must be positive")
        if len({c.name for c in self.cameras}) != len(self.cameras):
            raise SpecError("camera names must be unique")

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"] = [asdict(c) for c in self.cameras]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicySpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown spec fields: {sorted(unknown)}")
        d = dict(d)
        d["cameras"] = tuple(CameraSpec(**c) for c in d.get("cameras", ()))
        for k in ("state_names", "action_names", "action_units", "action_state_index", "delta_action_mask"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def check_compatible(self, other: "PolicySpec", *, what: str = "robot config") -> None:
        """Raise SpecError naming every field where `other` (e.g. the robot's) disagrees with this policy."""
        problems = []
        for f in ("state_names", "action_names", "action_type", "action_state_index", "robot"):
            mine, theirs = getattr(self, f), getattr(other, f)
            if mine != theirs:
                problems.append(f"{f}: policy {list(mine) if isinstance(mine, tuple) else mine!r} "
                                f"!= {what} {list(theirs) if isinstance(theirs, tuple) else theirs!r}")
        cams = {c.name: c for c in other.cameras}
        for c in self.cameras:
            if c.name not in cams:
                problems.append(f"camera {c.name!r} missing from {what}")
            elif (cams[c.name].height, cams[c.name].width) != (c.height, c.width):
                problems.append(f"camera {c.name!r}: policy {c.height}x{c.width} != {what} "
                                f"{cams[c.name].height}x{cams[c.name].width}")
        if abs(self.control_hz - other.control_hz) > 1e-6:
            problems.append(f"control_hz: policy {self.control_hz} != {what} {other.control_hz}")
        if problems:
            raise SpecError("policy spec does not match the " + what + ":\n  " + "\n  ".join(problems))
