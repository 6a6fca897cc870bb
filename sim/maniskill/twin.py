"""The simulated twin of a calibrated camera: a ManiSkill camera config from a calibration file.

    twin = CameraTwin.from_file("calib/base_camera.yaml", task="PushCube-v1", width=64, height=64)
    env = gym.make("PushCube-v1", obs_mode="rgb", sensor_configs=twin.sensor_configs())
    image = twin.distort(obs["sensor_data"]["base_camera"]["rgb"][0].numpy())   # what the real camera sees

or, for every ManiSkill env of the project (demos, RL, eval), the env config key
``env.maniskill.camera_calibration: calib/base_camera.yaml`` (sim/maniskill/config.py).

The calibration gives the camera pose in the robot base frame (eye_to_hand) or on the end effector (eye_in_hand:
rendered by ManiSkill's `panda_wristcam` robot, whose `hand_camera` rides on its `camera_link`; the pose is
re-expressed from the calibration's end-effector link to that link through the URDF), the intrinsics and the
distortion at the calibration's resolution. The twin scales the intrinsics to the policy's image size (as the deploy
node resizes real frames: pixel centres kept, `CalibrationFile.scaled`), puts the camera where the calibration says
relative to the simulated robot base, and renders a pinhole image slightly larger than the frame (a margin that
covers the lens distortion), which `distort` warps through the calibration's distortion model (cv2.remap) to the
frame the real camera would deliver. ManiSkill cameras look along +x with +z up; OpenCV's along +z with +y down.
"""

from __future__ import annotations

import functools
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
# An eye-in-hand camera: ManiSkill's Panda with a wrist camera, the camera's uid and the link it is mounted on.
HAND_ROBOT, HAND_MOUNT = "panda_wristcam", "camera_link"  # the camera's uid there: sim.maniskill.env.HAND_CAMERA


def hand_urdf() -> str:
    from mani_skill import PACKAGE_ASSET_DIR

    return f"{PACKAGE_ASSET_DIR}/robots/panda/panda_v3.urdf"


@functools.lru_cache(maxsize=4)
def urdf_chain(urdf: str):
    """pytorch_kinematics' float64 chain of a URDF (every link), parsed once per process."""
    import pytorch_kinematics as pk
    import torch

    from pirl_robot.safety.kinematics import _quiet_urdf_parser

    with _quiet_urdf_parser():
        return pk.build_chain_from_urdf(Path(urdf).read_bytes()).to(dtype=torch.float64)


def link_offset(urdf: str, from_link: str, to_link: str) -> np.ndarray:
    """T_from_to between two links of one rigid body (joined by fixed joints only): the same at any joint
    configuration, checked at two. Raises TwinError for unknown or relatively moving links."""
    import torch

    chain = urdf_chain(urdf)
    links = chain.get_link_names()
    for name in (from_link, to_link):
        if name not in links:
            raise TwinError(f"link {name!r} is not in {urdf} (links: {links})")
    offsets = []
    for value in (0.0, 0.3):
        fk = chain.forward_kinematics(torch.full((chain.n_joints,), value, dtype=torch.float64))
        T = [fk[n].get_matrix()[0].numpy() for n in (from_link, to_link)]
        offsets.append(inv(T[0]) @ T[1])
    if not np.allclose(offsets[0], offsets[1], atol=1e-9):
        raise TwinError(f"{to_link!r} moves relative to {from_link!r}: an eye-in-hand camera must be calibrated on "
                        f"a link of the hand")
    return offsets[0]


class TwinError(ValueError):
    """A calibration that cannot become a sim camera (no fixed pose, unknown task...)."""


@dataclass
class CameraTwin:
    calibration: CalibrationFile     # at the policy image size
    T_world_base: np.ndarray
    uid: str = "base_camera"
    T_mount_camera: np.ndarray | None = None  # eye_in_hand: the optical frame in ManiSkill's camera_link frame
    margin: int = 0                  # extra pinhole pixels rendered on each side for the distortion warp
    _maps: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _grids: dict = field(default_factory=dict, repr=False)  # distort_batch's sampling grid per device

    @classmethod
    def from_file(cls, path: str | Path, task: str, width: int, height: int, uid: str | None = None
                  ) -> "CameraTwin":
        return cls.from_calibration(load_calibration(path), task, width, height, uid)

    @classmethod
    def from_calibration(cls, cal: CalibrationFile, task: str, width: int, height: int, uid: str | None = None
                         ) -> "CameraTwin":
        if cal.mount not in ("eye_to_hand", "eye_in_hand") or cal.T_parent_camera is None:
            raise TwinError(f"the sim twin needs a calibrated camera pose (mount eye_to_hand or eye_in_hand); "
                            f"{cal.camera_name} has mount {cal.mount!r}")
        if task not in ROBOT_BASE_IN_WORLD:
            raise TwinError(f"no robot base pose known for task {task!r} (have {sorted(ROBOT_BASE_IN_WORLD)})")
        small = cal.scaled(width, height)
        base = make_T(np.eye(3), ROBOT_BASE_IN_WORLD[task])
        if cal.mount == "eye_in_hand":
            T_mount_ee = link_offset(hand_urdf(), HAND_MOUNT, cal.parent_frame)
            from sim.maniskill.env import HAND_CAMERA

            twin = cls(small, base, uid or HAND_CAMERA, T_mount_camera=T_mount_ee @ cal.T_parent_camera)
        else:
            twin = cls(small, base, uid or "base_camera")
        twin.margin = twin._distortion_margin()
        return twin

    @property
    def on_hand(self) -> bool:
        return self.T_mount_camera is not None

    # --- the ManiSkill side ---------------------------------------------------------------------------------------
    @property
    def T_world_camera(self) -> np.ndarray:
        """The OpenCV optical frame in the ManiSkill world frame (a fixed camera)."""
        return self.T_world_base @ self.calibration.T_base_camera

    def sensor_configs(self) -> dict:
        """gym.make(..., sensor_configs=...) entry overriding this camera (pose, size, intrinsics); an eye-in-hand
        camera's pose is relative to the link it is mounted on."""
        T = self.T_mount_camera if self.on_hand else self.T_world_camera
        R = T[:3, :3] @ CV_TO_SAPIEN.T  # SAPIEN camera axes in the world (eye-in-hand: in the mount link)
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

    def project_world(self, points_world: np.ndarray, T_base_parent: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixels, as the calibration predicts them (distortion included). An
        eye-in-hand camera needs its parent link's pose in the robot base frame (the arm's FK at that moment)."""
        T_world_parent = self.T_world_base if not self.on_hand else self.T_world_base @ T_base_parent
        pts = np.c_[np.asarray(points_world, dtype=np.float64), np.ones(len(points_world))]
        return self.calibration.project((inv(T_world_parent) @ pts.T).T[:, :3])

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
