"""Rigid transforms as 4x4 matrices, and the arm's end-effector pose from joint positions.

Naming: ``T_a_b`` maps points from frame b into frame a (the pose of b in a): p_a = T_a_b @ p_b.

    T = from_rvec_tvec(rvec, tvec)            # OpenCV's solvePnP output is T_camera_board
    fk = ArmFK.from_safety_config("configs/robot/panda.yaml")
    T_base_ee = fk.pose(q)                    # (4, 4), the same URDF and chain the safety filter checks
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, np.asarray(t, dtype=np.float64).reshape(3)
    return T


def inv(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def from_rvec_tvec(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    return make_T(R, tvec)


def to_rvec_tvec(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rvec, _ = cv2.Rodrigues(T[:3, :3])
    return rvec.reshape(3), T[:3, 3].copy()


def rotation_angle(R: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix."""
    return float(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


def rotation_axis_angle(R: np.ndarray) -> tuple[np.ndarray, float]:
    rvec, _ = cv2.Rodrigues(R)
    angle = float(np.linalg.norm(rvec))
    return (rvec.reshape(3) / angle if angle > 0 else np.zeros(3)), angle


def quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a rotation matrix, w >= 0 (ROS order)."""
    m = R
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2
    y = np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2
    z = np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2
    x = np.copysign(x, m[2, 1] - m[1, 2])
    y = np.copysign(y, m[0, 2] - m[2, 0])
    z = np.copysign(z, m[1, 0] - m[0, 1])
    q = np.array([x, y, z, w])
    return q / np.linalg.norm(q)


def quat_to_R(q_xyzw: Sequence[float]) -> np.ndarray:
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def mean_rotation(Rs: Sequence[np.ndarray]) -> np.ndarray:
    """Chordal L2 mean of rotation matrices (projection of their sum onto SO(3))."""
    U, _, Vt = np.linalg.svd(np.sum(Rs, axis=0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


class ArmFK:
    """End-effector pose in the URDF root frame, through the safety filter's own kinematic chain.

    pirl_robot.safety.EndEffectorFK parses the URDF with pytorch_kinematics for the workspace check; its chain
    gives the full pose too. Joint vectors are in the order of `joint_names` (the safety config's arm joints)."""

    def __init__(self, urdf: str | Path, ee_link: str, joint_names: Sequence[str]):
        from pirl_robot.safety.kinematics import EndEffectorFK

        self.fk = EndEffectorFK(urdf, ee_link, list(joint_names))
        self.joint_names = tuple(joint_names)
        self.ee_link = ee_link
        self.base_link = self.fk.chain.get_frame_names(exclude_fixed=False)[0]

    @classmethod
    def from_safety_config(cls, robot_yaml: str | Path, ee_link: str | None = None) -> "ArmFK":
        """The URDF, end-effector link and arm joints of a robot yaml's ``safety:`` section."""
        from pirl_robot.safety.config import default_panda_urdf, load_safety_config

        cfg = load_safety_config(robot_yaml)
        ws = cfg.workspace
        urdf = ws.urdf if ws else default_panda_urdf()
        return cls(urdf, ee_link or (ws.ee_link if ws else "panda_hand_tcp"), [j.urdf_joint for j in cfg.joints])

    def poses(self, q: np.ndarray) -> np.ndarray:
        """(B, n) joint positions -> (B, 4, 4) T_base_ee."""
        import torch

        q = np.atleast_2d(np.asarray(q, dtype=np.float64))
        if q.shape[1] != len(self.joint_names):
            raise ValueError(f"joint vectors need {len(self.joint_names)} entries {list(self.joint_names)}, "
                             f"got {q.shape[1]}")
        th = torch.from_numpy(np.ascontiguousarray(q[:, self.fk.columns]))
        with torch.inference_mode():
            return self.fk.chain.forward_kinematics(th).get_matrix().numpy().astype(np.float64)

    def pose(self, q: np.ndarray) -> np.ndarray:
        return self.poses(np.asarray(q)[None])[0]
