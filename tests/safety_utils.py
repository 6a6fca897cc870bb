"""Shared by the safety tests: an end-effector FK independent of the filter's pytorch_kinematics chain."""

from __future__ import annotations

import numpy as np
import pytest


class PinocchioFK:
    """End-effector position from SAPIEN's Pinocchio model of the same URDF (a second, independent FK)."""

    def __init__(self, urdf: str, ee_link: str, n_arm: int):
        sapien = pytest.importorskip("sapien")
        self.scene = sapien.Scene()
        robot = self.scene.create_urdf_loader().load(urdf)
        self.model = robot.create_pinocchio_model()
        self.link = [link.name for link in robot.get_links()].index(ee_link)
        self.dof, self.n_arm = len(robot.get_active_joints()), n_arm

    def __call__(self, q_arm: np.ndarray) -> np.ndarray:
        full = np.zeros(self.dof)
        full[: self.n_arm] = q_arm
        self.model.compute_forward_kinematics(full)
        return np.asarray(self.model.get_link_pose(self.link).p, dtype=np.float64)
