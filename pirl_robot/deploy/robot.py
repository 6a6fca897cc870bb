"""The robot side of the deploy contract, built from the node's parameters: the robot's PolicySpec (checked against
the bundle's), where each state entry comes from, and how an action maps to a command."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pirl_robot.drivers.arms.base import JointSample, name_index
from pirl_robot.drivers.cameras.factory import parse_camera_source
from pirl_robot.spec import CameraSpec, PolicySpec


class StaleInputError(RuntimeError):
    """An input the policy needs is missing or older than allowed."""


@dataclass(frozen=True)
class CameraEntry:
    name: str
    height: int
    width: int
    source: str


def parse_camera_entry(entry: str) -> CameraEntry:
    """'wrist=96x128=topic:/wrist/image_raw' -> CameraEntry('wrist', 96, 128, 'topic:/wrist/image_raw')."""
    parts = entry.split("=", 2)
    if len(parts) != 3:
        raise ValueError(f"camera entry {entry!r} must look like 'name=HxW=source'")
    name, size, source = parts
    h, sep, w = size.partition("x")
    if not name or not sep or not h.isdigit() or not w.isdigit() or int(h) <= 0 or int(w) <= 0:
        raise ValueError(f"camera entry {entry!r}: need a name and a size like 96x128")
    parse_camera_source(source)
    return CameraEntry(name, int(h), int(w), source)


def robot_spec(p: dict) -> PolicySpec:
    """The robot's PolicySpec from deploy parameters (chunking fields are the policy's business: not compared)."""
    cams = tuple(CameraSpec(c.name, c.height, c.width) for c in map(parse_camera_entry, p["cameras"]))
    return PolicySpec(state_names=tuple(p["state_names"]), action_names=tuple(p["action_names"]),
                      action_type=p["action_type"], action_state_index=tuple(p["action_state_index"]),
                      cameras=cams, control_hz=float(p["control_hz"]), robot=p["robot"])


class StateAssembler:
    """Policy state vector from the latest joint state and named task state.

    'qpos.<joint>' / '<joint>' -> joint position, 'qvel.<joint>' -> joint velocity, any other name -> the task
    state topic (named values from an object tracker or the simulator).
    """

    def __init__(self, state_names: tuple[str, ...]):
        self.names = state_names
        self.from_joints: list[tuple[int, str, str]] = []  # (state index, joint, position|velocity)
        self.from_task: list[tuple[int, str]] = []
        for i, n in enumerate(state_names):
            if n.startswith("qpos."):
                self.from_joints.append((i, n[5:], "position"))
            elif n.startswith("qvel."):
                self.from_joints.append((i, n[5:], "velocity"))
            else:
                self.from_task.append((i, n))
        # the same, as index arrays: state[at] = position[index of joint] (and velocities)
        self._pos_at = np.array([i for i, _, what in self.from_joints if what == "position"], dtype=np.intp)
        self._pos_joints = tuple(j for _, j, what in self.from_joints if what == "position")
        self._vel_at = np.array([i for i, _, what in self.from_joints if what == "velocity"], dtype=np.intp)
        self._vel_joints = tuple(j for _, j, what in self.from_joints if what == "velocity")

    @property
    def needs_task_state(self) -> bool:
        return bool(self.from_task)

    def build(self, joints: JointSample, task: dict[str, float] | None) -> np.ndarray:
        state = np.empty(len(self.names), dtype=np.float32)
        names = tuple(joints.names)
        pos, pos_missing = name_index(names, self._pos_joints)
        vel, vel_missing = name_index(names, self._vel_joints)
        unfilled = pos_missing or vel_missing or (len(pos) and joints.position is None) \
            or (len(vel) and joints.velocity is None)
        if unfilled:
            index = {n: k for k, n in enumerate(joints.names)}
            for i, joint, what in self.from_joints:  # the first entry that cannot be filled, in state order
                if joint not in index or (joints.position if what == "position" else joints.velocity) is None:
                    raise StaleInputError(f"joint state lacks {what} of {joint!r}")
        if len(pos):
            state[self._pos_at] = np.asarray(joints.position)[pos]
        if len(vel):
            state[self._vel_at] = np.asarray(joints.velocity)[vel]
        for i, name in self.from_task:
            if task is None or name not in task:
                raise StaleInputError(f"task state lacks {name!r}")
            state[i] = task[name]
        if not np.isfinite(state).all():
            bad = [self.names[i] for i in np.flatnonzero(~np.isfinite(state))[:5]]
            raise StaleInputError(f"state entries {bad} are not finite")
        return state


def fit_image(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a camera frame to the policy's input size (area interpolation: what downscaling needs)."""
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class CommandMap:
    """Policy action -> command vector (joint names and units of the controller): command = action*scale + offset."""

    names: tuple[str, ...]
    scale: np.ndarray
    offset: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "_inverse_scale", np.where(self.scale == 0, 1.0, self.scale))  # 0: entry unscaled

    @classmethod
    def from_params(cls, p: dict) -> "CommandMap":
        names = tuple(p["command_names"] or p["action_names"])
        n = len(names)
        if n != len(p["action_names"]):
            raise ValueError(f"command_names has {n} entries, action_names {len(p['action_names'])}")
        scale = np.asarray(p["command_scale"] or [1.0] * n, dtype=np.float64)
        offset = np.asarray(p["command_offset"] or [0.0] * n, dtype=np.float64)
        return cls(names, scale, offset)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.float64) * self.scale + self.offset

    def inverse(self, command: np.ndarray) -> np.ndarray:
        return (np.asarray(command, dtype=np.float64) - self.offset) / self._inverse_scale
