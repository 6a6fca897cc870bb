"""The simulated twin of a calibrated camera: a ManiSkill camera config from a calibration file.

    twin = CameraTwin.from_file("calib/base_camera.yaml", task="PushCube-v1", width=64, height=64)
    env = gym.make("PushCube-v1", obs_mode="rgb", sensor_configs=twin.sensor_configs())
    image = twin.distort(obs["sensor_data"]["base_camera"]["rgb"][0].numpy())   # what the real camera sees

or, for every ManiSkill env of the project (demos, RL, eval), the env config key
``env.maniskill.camera_calibration: calib/base_camera.yaml`` (sim/maniskill/config.py).

The calibration gives the camera pose in the robot base frame (eye_to_hand), the intrinsics and the distortion at
the calibration's resolution. The twin scales the intrinsics to the policy's image size (as the deploy node
resizes real frames: pixel centres kept, `CalibrationFile.scaled`), puts the camera where the calibration says
relative to the simulated robot base, and renders a pinhole image slightly larger than the frame (a margin that
covers the lens distortion), which `distort` warps through the calibration's distortion model (cv2.remap) to the
frame the real camera would deliver. ManiSkill cameras look along +x with +z up; OpenCV's along +z with +y down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from calibration.calib_file import CalibrationFile, load_calibration
from calibration.poses import inv, make_T, quat_xyzw

# Where each task puts the robot base in the world frame (ManiSkill's TableSceneBuilder for the Panda); checked
# against the live env by ManiSkillEnv when it is built with a camera calibration.
ROBOT_BASE_IN_WORLD = {"PushCube-v1": (-0.615, 0.0, 0.0), "PickCube-v1": (-0.615, 0.0, 0.0)}
# OpenCV optical frame axes expressed in SAPIEN's camera frame (x forward, y left, z up): columns = cv x, y, z
CV_TO_SAPIEN = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


class TwinError(ValueError):
    """A calibration that cannot become a sim camera (no fixed pose, unknown task...)."""


@dataclass
class CameraTwin:
    calibration: CalibrationFile     # at the policy image size
    T_world_base: np.ndarray
    uid: str = "base_camera"
    margin: int = 0                  # extra pinhole pixels rendered on each side for the distortion warp
    _maps: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _grids: dict = field(default_factory=dict, repr=False)  # distort_batch's sampling grid per device

    @classmethod
    def from_file(cls, path: str | Path, task: str, width: int, height: int, uid: str = "base_camera"
                  ) -> "CameraTwin":
        return cls.from_calibration(load_calibration(path), task, width, height, uid)

    @classmethod
    def from_calibration(cls, cal: CalibrationFile, task: str, width: int, height: int, uid: str = "base_camera"
                         ) -> "CameraTwin":
        if cal.mount != "eye_to_hand":
            raise TwinError(f"the sim twin needs a fixed camera pose in the robot base frame (mount eye_to_hand); "
                            f"{cal.camera_name} has mount {cal.mount!r}")
        if task not in ROBOT_BASE_IN_WORLD:
            raise TwinError(f"no robot base pose known for task {task!r} (have {sorted(ROBOT_BASE_IN_WORLD)})")
        small = cal.scaled(width, height)
        twin = cls(small, make_T(np.eye(3), ROBOT_BASE_IN_WORLD[task]), uid)
        twin.margin = twin._distortion_margin()
        return twin

    # --- the ManiSkill side ---------------------------------------------------------------------------------------
    @property
    def T_world_camera(self) -> np.ndarray:
        """The OpenCV optical frame in the ManiSkill world frame."""
        return self.T_world_base @ self.calibration.T_base_camera

    def sensor_configs(self) -> dict:
        """gym.make(..., sensor_configs=...) entry overriding this camera (pose, size, intrinsics)."""
        T = self.T_world_camera
        R = T[:3, :3] @ CV_TO_SAPIEN.T  # SAPIEN camera axes in the world
        x, y, z, w = quat_xyzw(R)
        K = self.calibration.K.copy()
        # SAPIEN puts pixel centres at +0.5 (measured: -0.5 px in both axes on every marker without the shift);
        # calibrations (OpenCV, ROS) put them at integers
        K[0, 2] += self.margin + 0.5
        K[1, 2] += self.margin + 0.5
        return {self.uid: {"pose": [*map(float, T[:3, 3]), float(w), float(x), float(y), float(z)],
                           "width": self.calibration.width + 2 * self.margin,
                           "height": self.calibration.height + 2 * self.margin,
                           "intrinsic": K.tolist(), "fov": None}}

    def distort(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        """The rendered (pinhole, with margin) image -> the frame the real camera gives (H, W[, C])."""
        if self._maps is None:
            self._maps = self._distortion_maps()
        return cv2.remap(np.ascontiguousarray(image), *self._maps,
                         cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def distort_batch(self, images: "torch.Tensor") -> "torch.Tensor":
        """`distort` for a batch on any device: (N, H', W', C) uint8 -> (N, H, W, C) uint8, through
        torch's grid_sample (bilinear, border) with the same maps, so a batched GPU env warps where it renders."""
        import torch
        import torch.nn.functional as F

        h_in, w_in = images.shape[1:3]
        key = (str(images.device), h_in, w_in)
        if key not in self._grids:  # built once per device
            if self._maps is None:
                self._maps = self._distortion_maps()
            mx, my = (torch.as_tensor(m, device=images.device) for m in self._maps)
            self._grids[key] = torch.stack([2 * mx / (w_in - 1) - 1, 2 * my / (h_in - 1) - 1], -1)[None]
        grid = self._grids[key]  # normalised source pixel centres (align_corners=True)
        x = images.permute(0, 3, 1, 2).float()
        out = F.grid_sample(x, grid.expand(len(x), -1, -1, -1), mode="bilinear", padding_mode="border",
                            align_corners=True)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def project_world(self, points_world: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixels, as the calibration predicts them (distortion included)."""
        pts = (inv(self.T_world_base) @ np.c_[np.asarray(points_world, dtype=np.float64), np.ones(len(points_world))
                                              ].T).T[:, :3]
        return self.calibration.project(pts)

    # --- internals ------------------------------------------------------------------------------------------------
    def _undistorted(self, pixels: np.ndarray) -> np.ndarray:
        cal = self.calibration
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
        xy = cv2.undistortPointsIter(pixels.reshape(-1, 1, 2).astype(np.float64), cal.K, cal.dist, None, None,
                                     crit).reshape(-1, 2)
        return xy * [cal.K[0, 0], cal.K[1, 1]] + [cal.K[0, 2], cal.K[1, 2]]

    def _distortion_margin(self) -> int:
        w, h = self.calibration.width, self.calibration.height
        edge = np.array([[u, v] for u in np.linspace(0, w - 1, 9) for v in (0, h - 1)] +
                        [[u, v] for u in (0, w - 1) for v in np.linspace(0, h - 1, 9)])
        pinhole = self._undistorted(edge)
        over = max(0.0, float(-pinhole.min()), float((pinhole - [w - 1, h - 1]).max()))
        return int(np.ceil(over)) + 2

    def _distortion_maps(self) -> tuple[np.ndarray, np.ndarray]:
        w, h = self.calibration.width, self.calibration.height
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        src = self._undistorted(np.stack([u.ravel(), v.ravel()], axis=1)) + self.margin
        return (src[:, 0].reshape(h, w).astype(np.float32), src[:, 1].reshape(h, w).astype(np.float32))


def check_base_pose(twin: CameraTwin, base_pose: np.ndarray) -> None:
    """Refuse an env whose robot base is not where the twin placed the camera relative to (xyz + wxyz)."""
    if not np.allclose(base_pose[:3], twin.T_world_base[:3, 3], atol=1e-4) or \
            not np.allclose(np.abs(base_pose[3]), 1.0, atol=1e-6):
        raise TwinError(f"the robot base is at {np.round(base_pose, 4).tolist()} in the world, the camera twin "
                        f"assumed {twin.T_world_base[:3, 3].tolist()} (identity rotation); update ROBOT_BASE_IN_WORLD")
