"""Panda inverse kinematics for the scripted experts, on SAPIEN's Pinocchio model of ManiSkill's own Panda URDF.

The same solver ManiSkill's CPU end-effector controllers use, built standalone from the URDF so an expert needs
no env internals. Poses are in the robot base frame, as xyz + wxyz quaternion.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import sapien
from sapien.wrapper.pinocchio_model import PinocchioModel

from sim.maniskill.env import JOINTS

TCP_LINK = "panda_hand_tcp"


class IKError(RuntimeError):
    """The target pose is out of reach (or the solver did not converge)."""


class PandaIK:
    def __init__(self, urdf_path: str | None = None):
        if urdf_path is None:
            from mani_skill.agents.robots.panda.panda import Panda

            urdf_path = Panda.urdf_path
        with open(urdf_path) as f:
            xml = f.read()
        links = [node.get("name") for node in ET.fromstring(xml) if node.tag == "link"]
        self.model = PinocchioModel(xml, [0.0, 0.0, -9.81])
        self.model.set_joint_order(list(JOINTS))
        self.model.set_link_order(links)
        self.tcp_index = links.index(TCP_LINK)
        self.arm_mask = np.array([1] * 7 + [0, 0], dtype=np.int32)  # fingers do not move the TCP

    def fk(self, qpos: np.ndarray) -> np.ndarray:
        """qpos (9,) -> TCP pose (7,) in the base frame."""
        self.model.compute_forward_kinematics(np.asarray(qpos, dtype=np.float64))
        pose = self.model.get_link_pose(self.tcp_index)
        return np.concatenate([pose.p, pose.q])

    def ik(self, pose: np.ndarray, qpos_init: np.ndarray, max_iterations: int = 100,
           tolerance: float = 0.0) -> np.ndarray:
        """TCP pose (7,) in the base frame -> arm joint positions (7,), solved from qpos_init (9,).

        tolerance > 0 accepts an unconverged solution whose error (position m / rotation rad) is below it: near
        the edge of the workspace the closest reachable configuration is what an expert should command."""
        target = sapien.Pose(p=np.asarray(pose[:3], dtype=np.float64), q=np.asarray(pose[3:], dtype=np.float64))
        q, ok, err = self.model.compute_inverse_kinematics(
            self.tcp_index, target, initial_qpos=np.asarray(qpos_init, dtype=np.float64), active_qmask=self.arm_mask,
            max_iterations=max_iterations)
        if not ok and not np.abs(err).max() < tolerance:
            raise IKError(f"IK did not converge for TCP pose {np.round(pose, 3)} (error {np.round(err, 4)})")
        return np.asarray(q[:7], dtype=np.float64)


def world_to_base(base_pose: np.ndarray, world_pose: np.ndarray) -> np.ndarray:
    """A world-frame pose (7,) or position (3,) expressed in the robot base frame."""
    base = sapien.Pose(p=base_pose[:3], q=base_pose[3:])
    if world_pose.shape[-1] == 3:
        return (base.inv() * sapien.Pose(p=world_pose)).p
    pose = base.inv() * sapien.Pose(p=world_pose[:3], q=world_pose[3:])
    return np.concatenate([pose.p, pose.q])
