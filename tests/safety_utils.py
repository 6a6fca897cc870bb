"""Shared by the safety tests: the shipped panda config's path and rest pose, a settable clock, and an
end-effector FK independent of the filter's own. The config and its FK are fixtures in conftest.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

PANDA_YAML = Path(__file__).resolve().parents[1] / "configs" / "robot" / "panda.yaml"
REST = np.array([0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 1.0])
HZ, T = 50.0, 0.02


class Clock:
    """A clock the test sets by hand (filters and watchdogs take it instead of time.monotonic)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


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
