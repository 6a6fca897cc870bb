"""A simulated Panda as an Arm, on the sim adapter's single ManiSkill env (sim/maniskill/env.py).

Commands use hardware units: 7 arm joint targets (rad) and the finger joint target (m), as a ros2_control Panda
takes them; the normalised gripper action ManiSkill's pd_joint_pos expects is derived here. A command entry named
"gripper" (already normalised, 1 = open) is accepted too. The simulator steps only when `step()` is called (the
sim arm node calls it at the control rate), holding the last target like a position controller.
"""

from __future__ import annotations

import time

import numpy as np

from pirl_robot.drivers.arms.base import Arm, ArmError, JointSample

FINGER = "panda_finger_joint1"
FINGER_LOW, FINGER_HIGH = -0.01, 0.04  # ManiSkill Panda gripper controller range (m)


def finger_to_gripper(q: float) -> float:
    return float(np.clip(2.0 * (q - FINGER_LOW) / (FINGER_HIGH - FINGER_LOW) - 1.0, -1.0, 1.0))


def gripper_to_finger(g: float) -> float:
    return FINGER_LOW + (float(g) + 1.0) * 0.5 * (FINGER_HIGH - FINGER_LOW)


class ManiSkillArm(Arm):
    def __init__(self, task_config):
        super().__init__()
        from sim.maniskill.env import ARM_JOINTS, JOINTS, ManiSkillEnv

        self.cfg = task_config
        self.env = ManiSkillEnv(task_config)
        self.arm_joints = ARM_JOINTS
        self.joint_names = JOINTS
        self.command_names = ARM_JOINTS + (FINGER,)
        self.obs: dict | None = None
        self.info: dict = {}
        self.target = np.zeros(len(ARM_JOINTS) + 1, dtype=np.float32)  # env action: arm rad + gripper [-1, 1]
        self.steps = 0
        self.success_once = False

    def reset(self, seed: int | None = None) -> None:
        self.obs, self.info = self.env.reset(seed=seed)
        self.steps, self.success_once = 0, False
        q = self.env.privileged()["qpos"]
        self.target = np.concatenate([q[:7], [finger_to_gripper(q[7])]]).astype(np.float32)
        self._store_sample()

    def connect(self) -> None:
        super().connect()
        if self.obs is None:
            self.reset()

    def disconnect(self) -> None:
        super().disconnect()
        self.env.close()

    def send(self, targets, names: tuple[str, ...] | None = None) -> np.ndarray:
        """Set the target held from the next `step()` on. `names` orders `targets` (default command_names)."""
        if not self._connected:
            raise ArmError("simulated arm is not connected")
        names = tuple(names or self.command_names)
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        if t.shape != (len(names),) or not np.isfinite(t).all():
            raise ArmError(f"bad command {t} for joints {list(names)}")
        new = self.target.copy()
        for n, v in zip(names, t):
            if n in self.arm_joints:
                new[self.arm_joints.index(n)] = v
            elif n == FINGER:
                new[-1] = finger_to_gripper(v)
            elif n == "gripper":
                new[-1] = np.clip(v, -1.0, 1.0)
            else:
                raise ArmError(f"simulated Panda has no command entry {n!r} (takes {list(self.command_names)})")
        self.target = new
        return t

    def step(self) -> None:
        self.obs, _, _, _, self.info = self.env.step(self.target)
        self.steps += 1
        self.success_once = self.success_once or bool(self.info.get("success", False))
        self._store_sample()

    def _store_sample(self) -> None:
        p = self.env.privileged()
        self._store(JointSample(self.joint_names, p["qpos"], p["qvel"], time.monotonic()))

    def named_state(self) -> dict[str, float]:
        """Every entry of the policy state vector by name (qpos.*, qvel.*, tcp_pose.*, obj_pose.* ...)."""
        return dict(zip(self.env.state_names, self.obs["state"].tolist()))

    def images(self) -> dict[str, np.ndarray]:
        return dict(self.obs["images"]) if self.obs else {}
