"""A lerobot Robot (SO-101 follower, Koch, ...) as an Arm.

lerobot speaks ``{"<motor>.pos": value}`` dicts in its own units (degrees, or -100..100, and 0..100 for the
gripper); this driver speaks joint vectors in ROS units: motors in DEGREES mode are converted to radians, others
pass unchanged. Cameras attached to the lerobot robot come back in `images` after each read.

    from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig
    arm = LeRobotArm(SO101Follower(SO101FollowerConfig(port="/dev/ttyACM0", id="follower")))
"""

from __future__ import annotations

import math
import time

import numpy as np

from pirl_robot.drivers.arms.base import Arm, ArmError, JointSample


def _default_scale(robot) -> dict[str, float]:
    scale = {}
    motors = getattr(getattr(robot, "bus", None), "motors", {}) or {}
    for name, motor in motors.items():
        mode = getattr(getattr(motor, "norm_mode", None), "name", "")
        scale[name] = math.pi / 180.0 if mode == "DEGREES" else 1.0
    return scale


class LeRobotArm(Arm):
    def __init__(self, robot, scale: dict[str, float] | None = None, calibrate: bool = False):
        super().__init__()
        self.robot = robot
        motors = [k.removesuffix(".pos") for k, v in robot.action_features.items() if k.endswith(".pos")]
        if not motors:
            raise ArmError(f"{robot} has no '<motor>.pos' action features: {list(robot.action_features)}")
        self.joint_names = self.command_names = tuple(motors)
        self.scale = np.array([(scale or _default_scale(robot)).get(m, 1.0) for m in motors], dtype=np.float64)
        self._calibrate = calibrate
        self.images: dict[str, np.ndarray] = {}

    @property
    def is_connected(self) -> bool:
        return self._connected and bool(self.robot.is_connected)

    def connect(self) -> None:
        if not self.robot.is_connected:
            self.robot.connect(calibrate=self._calibrate)
        super().connect()

    def disconnect(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()
        super().disconnect()

    def poll(self) -> JointSample:
        """Read the robot (blocking bus read) and store the sample; lerobot has no push interface."""
        if not self.is_connected:
            raise ArmError(f"{self.robot} is not connected")
        try:
            obs = self.robot.get_observation()
        except Exception as e:  # bus errors, unplugged USB: the caller's watchdog decides what to do
            raise ArmError(f"{self.robot}: reading the arm failed ({e})") from e
        pos = np.array([obs[f"{m}.pos"] for m in self.joint_names], dtype=np.float64) * self.scale
        self.images = {k: v for k, v in obs.items() if isinstance(v, np.ndarray) and v.ndim == 3}
        sample = JointSample(self.joint_names, pos, None, time.monotonic())
        self._store(sample)
        return sample

    def read_state(self, max_age_ms: float) -> JointSample:
        self.poll()
        return super().read_state(max_age_ms)

    def send(self, targets) -> np.ndarray:
        if not self.is_connected:
            raise ArmError(f"{self.robot} is not connected")
        t = self._check_targets(targets)
        action = {f"{m}.pos": float(v) for m, v in zip(self.command_names, t / self.scale)}
        try:
            sent = self.robot.send_action(action)
        except Exception as e:
            raise ArmError(f"{self.robot}: sending the command failed ({e})") from e
        return np.array([sent.get(f"{m}.pos", np.nan) for m in self.command_names], dtype=np.float64) * self.scale
