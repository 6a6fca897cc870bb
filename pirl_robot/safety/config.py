"""Safety limits of one robot, read from the ``safety:`` section of ``configs/robot/<robot>.yaml``.

Modelled on ros2_control's joint_limits: per joint ``has_*_limits`` flags with their values, a soft-limit margin
inside the position range, plus what a learned policy needs on top (a per-tick change cap, a gripper range, an
end-effector workspace box, the smooth-start ramp and the watchdog timeouts). Every field is validated here; a
mistake is a `SafetyConfigError` naming the field, never a silently ignored key. docs/safety.md lists them all.

    cfg = load_safety_config("configs/robot/panda.yaml", spec=policy.spec)
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from pirl_robot.config import check_keys
from pirl_robot.spec import PolicySpec

_REQUIRED = object()
# The filter bounds absolute joint targets; a joint_delta policy's actions are made absolute before the filter.
SUPPORTED_ACTION_TYPES = ("joint_pos", "joint_delta")


class SafetyConfigError(ValueError):
    """The safety config is malformed or does not fit the policy / robot it is used with."""


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    check_keys(d, allowed, where, SafetyConfigError)


def _num(d: Mapping[str, Any], key: str, where: str, default: Any = _REQUIRED, *, positive: bool = False,
         non_negative: bool = False) -> float:
    if key not in d or d[key] is None:
        if default is _REQUIRED:
            raise SafetyConfigError(f"{where}.{key} is required")
        return default
    x = d[key]
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise SafetyConfigError(f"{where}.{key} must be a finite number, got {x!r}")
    if positive and x <= 0:
        raise SafetyConfigError(f"{where}.{key} must be > 0, got {x}")
    if non_negative and x < 0:
        raise SafetyConfigError(f"{where}.{key} must be >= 0, got {x}")
    return float(x)


def _flag(d: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    x = d.get(key, default)
    if not isinstance(x, bool):
        raise SafetyConfigError(f"{where}.{key} must be true or false, got {x!r}")
    return x


def _str(d: Mapping[str, Any], key: str, where: str, default: Any = _REQUIRED) -> str:
    x = d.get(key, default)
    if x is _REQUIRED:
        raise SafetyConfigError(f"{where}.{key} is required")
    if not isinstance(x, str) or not x:
        raise SafetyConfigError(f"{where}.{key} must be a non-empty string, got {x!r}")
    return x


def _limited(d: Mapping[str, Any], kind: str, where: str, has_default: bool) -> float | None:
    """Value of max_<kind> when has_<kind>_limits is true (then required, > 0), else None (and must be absent)."""
    has = _flag(d, f"has_{kind}_limits", where, has_default)
    key = f"max_{kind}"
    if not has:
        if d.get(key) is not None:
            raise SafetyConfigError(f"{where}.{key} is set but has_{kind}_limits is false; remove one of them")
        return None
    return _num(d, key, where, positive=True)


@dataclass(frozen=True)
class JointLimits:
    """Limits of one commanded arm joint (radians, rad/s, rad/s^2, rad/s^3; metres for prismatic joints)."""

    name: str
    urdf_joint: str
    min_position: float | None  # None: no position limits (continuous joint)
    max_position: float | None
    position_margin: float
    max_velocity: float | None
    max_acceleration: float | None
    max_jerk: float | None
    max_step: float

    KEYS = {"name", "urdf_joint", "has_position_limits", "min_position", "max_position", "position_margin",
            "has_velocity_limits", "max_velocity", "has_acceleration_limits", "max_acceleration",
            "has_jerk_limits", "max_jerk", "max_step"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "JointLimits":
        if isinstance(d, Mapping) and isinstance(d.get("name"), str):
            where = f"{where} ({d['name']})"
        _check_keys(d, cls.KEYS, where)
        name = _str(d, "name", where)
        lo = hi = None
        margin = _num(d, "position_margin", where, 0.0, non_negative=True)
        if _flag(d, "has_position_limits", where, True):
            lo, hi = _num(d, "min_position", where), _num(d, "max_position", where)
            if lo >= hi:
                raise SafetyConfigError(f"{where}: min_position {lo} must be < max_position {hi}")
            if 2 * margin >= hi - lo:
                raise SafetyConfigError(f"{where}: position_margin {margin} leaves no room inside [{lo}, {hi}]")
        elif d.get("min_position") is not None or d.get("max_position") is not None:
            raise SafetyConfigError(f"{where}: min/max_position set but has_position_limits is false")
        return cls(name=name, urdf_joint=_str(d, "urdf_joint", where, name), min_position=lo, max_position=hi,
                   position_margin=margin, max_velocity=_limited(d, "velocity", where, True),
                   max_acceleration=_limited(d, "acceleration", where, True),
                   max_jerk=_limited(d, "jerk", where, False), max_step=_num(d, "max_step", where, positive=True))


@dataclass(frozen=True)
class GripperLimits:
    """The gripper command: a range (no margin), a speed and a per-tick change cap, in the command's units."""

    name: str
    min_position: float
    max_position: float
    max_velocity: float
    max_step: float

    KEYS = {"name", "min_position", "max_position", "max_velocity", "max_step"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "gripper") -> "GripperLimits":
        _check_keys(d, cls.KEYS, where)
        lo, hi = _num(d, "min_position", where), _num(d, "max_position", where)
        if lo >= hi:
            raise SafetyConfigError(f"{where}: min_position {lo} must be < max_position {hi}")
        return cls(_str(d, "name", where), lo, hi, _num(d, "max_velocity", where, positive=True),
                   _num(d, "max_step", where, positive=True))


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box (metres, URDF root frame) the end-effector link must stay in."""

    min: tuple[float, float, float]
    max: tuple[float, float, float]
    urdf: str  # resolved absolute path
    ee_link: str = "panda_hand_tcp"

    KEYS = {"enabled", "urdf", "ee_link", "min", "max"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: Path | None, where: str = "workspace") -> "WorkspaceBox | None":
        _check_keys(d, cls.KEYS, where)
        if not _flag(d, "enabled", where, True):
            return None
        corners = []
        for key in ("min", "max"):
            v = d.get(key)
            if (not isinstance(v, (list, tuple)) or len(v) != 3
                    or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)):
                raise SafetyConfigError(f"{where}.{key} must be a list of 3 finite numbers [x, y, z], got {v!r}")
            corners.append(tuple(float(x) for x in v))
        if any(a >= b for a, b in zip(*corners)):
            raise SafetyConfigError(f"{where}: min {list(corners[0])} must be < max {list(corners[1])} on every axis")
        urdf = d.get("urdf") or default_panda_urdf()
        path = Path(urdf)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise SafetyConfigError(f"{where}.urdf: no such file {str(path)!r}")
        return cls(corners[0], corners[1], str(path), _str(d, "ee_link", where, "panda_hand_tcp"))


@dataclass(frozen=True)
class StartConfig:
    """Smooth start: after (re)starting, limits are scaled down until the arm has caught up with the policy."""

    velocity_scale: float = 0.25  # applied to velocity, acceleration and jerk limits while starting
    tolerance: float = 0.02       # caught up when every arm joint is this close to the (clamped) policy command

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "start") -> "StartConfig":
        _check_keys(d, {"velocity_scale", "tolerance"}, where)
        scale = _num(d, "velocity_scale", where, cls.velocity_scale, positive=True)
        if scale > 1:
            raise SafetyConfigError(f"{where}.velocity_scale must be in (0, 1], got {scale}")
        return cls(scale, _num(d, "tolerance", where, cls.tolerance, positive=True))


@dataclass(frozen=True)
class WatchdogConfig:
    """Freshness timeouts (seconds). A stale input holds the arm; a hold lasting stop_after_s becomes a stop."""

    camera_timeout_s: float = 0.2
    joint_state_timeout_s: float = 0.1
    policy_deadline_s: float = 0.5   # one inference call, request to result
    policy_stale_s: float = 1.0      # since the last good result (catches an inference loop that stopped asking)
    stop_after_s: float = 2.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "watchdog") -> "WatchdogConfig":
        names = set(cls.__dataclass_fields__)
        _check_keys(d, names, where)
        return cls(**{k: _num(d, k, where, getattr(cls, k), positive=True) for k in names})


@dataclass(frozen=True)
class SafetyConfig:
    joints: tuple[JointLimits, ...]
    gripper: GripperLimits | None = None
    workspace: WorkspaceBox | None = None
    reject_beyond: float = 0.25  # reject (hold), not clamp, a command this far outside the range (x range width)
    start: StartConfig = field(default_factory=StartConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)

    KEYS = {"joints", "gripper", "workspace", "reject_beyond", "start", "watchdog"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | Path | None = None) -> "SafetyConfig":
        """`d` is the ``safety:`` section; relative URDF paths are resolved against `base_dir`."""
        _check_keys(d, cls.KEYS, "safety")
        joints_raw = d.get("joints")
        if not isinstance(joints_raw, (list, tuple)) or not joints_raw:
            raise SafetyConfigError("safety.joints must be a non-empty list of joint entries")
        joints = tuple(JointLimits.from_dict(j, f"safety.joints[{i}]") for i, j in enumerate(joints_raw))
        gripper = GripperLimits.from_dict(d["gripper"], "safety.gripper") if d.get("gripper") is not None else None
        names = [j.name for j in joints] + ([gripper.name] if gripper else [])
        if len(set(names)) != len(names):
            raise SafetyConfigError(f"safety: command entry names must be unique, got {names}")
        base = Path(base_dir) if base_dir is not None else None
        ws = None if d.get("workspace") is None else WorkspaceBox.from_dict(d["workspace"], base, "safety.workspace")
        return cls(joints, gripper, ws, _num(d, "reject_beyond", "safety", 0.25, non_negative=True),
                   StartConfig.from_dict(d.get("start") or {}, "safety.start"),
                   WatchdogConfig.from_dict(d.get("watchdog") or {}, "safety.watchdog"))

    @property
    def entry_names(self) -> tuple[str, ...]:
        """Command entries in order: the arm joints, then the gripper."""
        return tuple(j.name for j in self.joints) + ((self.gripper.name,) if self.gripper else ())

    def check_spec(self, spec: PolicySpec) -> None:
        """Refuse a policy whose actions are not exactly these command entries, in this order."""
        if spec.action_type not in SUPPORTED_ACTION_TYPES:
            raise SafetyConfigError(f"the safety filter bounds joint targets; action_type {spec.action_type!r} "
                                    f"is not one of {SUPPORTED_ACTION_TYPES}")
        if tuple(spec.action_names) != self.entry_names:
            raise SafetyConfigError(
                f"policy has {len(spec.action_names)} actions {list(spec.action_names)}, the safety config has "
                f"{len(self.entry_names)} entries {list(self.entry_names)} (arm joints then gripper, same order)")

    def vectors(self) -> dict[str, np.ndarray]:
        """Per-entry limit vectors (arm joints then gripper); a missing limit is +/-inf."""
        inf = math.inf
        rows = [(j.min_position if j.min_position is not None else -inf,
                 j.max_position if j.max_position is not None else inf, j.position_margin,
                 j.max_velocity or inf, j.max_acceleration or inf, j.max_jerk or inf, j.max_step)
                for j in self.joints]
        if self.gripper:
            g = self.gripper
            rows.append((g.min_position, g.max_position, 0.0, g.max_velocity, inf, inf, g.max_step))
        lo, hi, margin, vmax, amax, jmax, step = (np.array(c, dtype=np.float64) for c in zip(*rows))
        return {"hard_lo": lo, "hard_hi": hi, "soft_lo": lo + margin, "soft_hi": hi - margin,
                "max_velocity": vmax, "max_acceleration": amax, "max_jerk": jmax, "max_step": step}


def default_panda_urdf() -> str:
    """The Panda URDF that ManiSkill ships (the same model the simulator runs). Located without importing
    mani_skill, which would pull in SAPIEN and torch."""
    spec = importlib.util.find_spec("mani_skill")
    if spec is None or not spec.submodule_search_locations:
        raise SafetyConfigError("workspace.urdf is not set and mani_skill (which ships the Panda URDF) is missing")
    return str(Path(spec.submodule_search_locations[0]) / "assets" / "robots" / "panda" / "panda_v2.urdf")


def load_safety_config(source: str | Path | Mapping[str, Any], spec: PolicySpec | None = None) -> SafetyConfig:
    """Read the ``safety:`` section of a robot yaml (or take a mapping holding it); check it against `spec`."""
    base_dir = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise SafetyConfigError(f"cannot read safety config {str(path)!r}: {e}") from e
        base_dir = path.parent
    else:
        data = source
    if not isinstance(data, Mapping) or not isinstance(data.get("safety"), Mapping):
        what = str(source) if base_dir is not None else "safety config"
        raise SafetyConfigError(f"{what}: expected a mapping with a 'safety:' section")
    cfg = SafetyConfig.from_dict(data["safety"], base_dir)
    if spec is not None:
        cfg.check_spec(spec)
    return cfg
