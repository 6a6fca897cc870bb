"""Board views rendered with known intrinsics, distortion and pose: ground truth for tests and docs.

    cam = SyntheticCamera(K, dist, (640, 480))
    img = cam.render(board, T_cam_board, noise_std=2.0, rng=rng)   # uint8 gray, the board as this camera sees it

Each output pixel's ray (through the distortion model: cv2.undistortPoints) is intersected with the board plane
and the printed board image is sampled there, so corners land where cv2.projectPoints puts them. Rendering is
supersampled (2 x 2 per pixel, then area-averaged) and Gaussian noise is added to the intensities. Pixels
that see no board get a textured gray background.
"""

from __future__ import annotations

from dataclasses import dataclass

import functools

import cv2
import numpy as np

from calibration.board import Board
from calibration.poses import inv, make_T

SUPERSAMPLE = 2
BOARD_PPM = 8000.0  # texture pixels per metre of the board image


@dataclass
class SyntheticCamera:
    K: np.ndarray
    dist: np.ndarray
    size: tuple[int, int]  # (width, height)

    def _rays(self) -> np.ndarray:
        key = (self.K.tobytes(), np.asarray(self.dist).tobytes(), tuple(self.size), SUPERSAMPLE)
        if getattr(self, "_ray_key", None) != key:
            self._ray_cache, self._ray_key = _rays_for(self.K, np.asarray(self.dist, dtype=np.float64), self.size), key
        return self._ray_cache

    def project(self, points: np.ndarray, T_cam_obj: np.ndarray) -> np.ndarray:
        """(N, 3) points in the object frame -> (N, 2) pixels (what the calibration predicts)."""
        rvec, _ = cv2.Rodrigues(T_cam_obj[:3, :3])
        px, _ = cv2.projectPoints(np.asarray(points, dtype=np.float64), rvec, T_cam_obj[:3, 3], self.K, self.dist)
        return px.reshape(-1, 2)

    def render(self, board: Board, T_cam_board: np.ndarray, noise_std: float = 0.0,
               rng: np.random.Generator | None = None, blur_sigma: float = 0.0) -> np.ndarray:
        s, (w, h) = SUPERSAMPLE, self.size
        xy = self._rays()
        T_board_cam = inv(T_cam_board)
        d = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ T_board_cam[:3, :3].T
        c = T_board_cam[:3, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = -c[2] / d[:, 2]
        hit = c[None, :2] + depth[:, None] * d[:, :2]
        texture = _texture(board)
        map_x = (hit[:, 0] * BOARD_PPM - 0.5).astype(np.float32)
        map_y = (hit[:, 1] * BOARD_PPM - 0.5).astype(np.float32)
        behind = ~(depth > 0)
        map_x[behind] = map_y[behind] = -1e4
        # a margin of white paper around the printed board, then the background
        paper = cv2.copyMakeBorder(texture, 400, 400, 400, 400, cv2.BORDER_CONSTANT, value=235)
        hi = cv2.remap(paper, (map_x + 400).reshape(h * s, w * s), (map_y + 400).reshape(h * s, w * s),
                       cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
        hi = hi.astype(np.float32)
        outside = (map_x < -400) | (map_x > paper.shape[1] - 400) | (map_y < -400) | (map_y > paper.shape[0] - 400)
        v, u = np.mgrid[0:h * s, 0:w * s]
        bg = 90 + 30 * np.sin(u / 37.0) * np.cos(v / 23.0)
        hi = np.where(outside.reshape(h * s, w * s), bg, hi)
        img = cv2.resize(hi, (w, h), interpolation=cv2.INTER_AREA)
        if blur_sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
        if noise_std > 0:
            img = img + (rng or np.random.default_rng()).normal(0.0, noise_std, img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _texture(board: Board) -> np.ndarray:
    return board.image(BOARD_PPM)


def _rays_for(K: np.ndarray, dist: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalised image coordinates (x/z, y/z) of every supersampled pixel centre, through the distortion."""
    s, (w, h) = SUPERSAMPLE, size
    K_hi = K.copy()
    K_hi[:2] *= s
    K_hi[0, 2] += (s - 1) / 2  # pixel centres: hi-res pixel k is at (k + 0.5) / s - 0.5 in low-res pixels
    K_hi[1, 2] += (s - 1) / 2
    u, v = np.meshgrid(np.arange(w * s, dtype=np.float64), np.arange(h * s, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel()], axis=1)[:, None, :]
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)
    return cv2.undistortPointsIter(pix, K_hi, dist, None, None, crit).reshape(-1, 2)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """T_world_camera of an OpenCV camera (z forward, y down) at `eye` looking at `target`."""
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_T(np.stack([x, y, z], axis=1), eye)


def random_board_views(board: Board, n: int, rng: np.random.Generator, distance=(0.35, 0.7),
                       max_tilt_deg: float = 40.0) -> list[np.ndarray]:
    """n poses T_cam_board of the board in front of a camera: varied distance, tilt about random in-plane axes,
    roll, and offsets that move the board across the image."""
    cx, cy = (s / 2 for s in board.size_m)
    out = []
    for _ in range(n):
        axis = rng.normal(size=2)
        axis = np.array([*axis / np.linalg.norm(axis), 0.0])
        tilt = np.radians(rng.uniform(15.0, max_tilt_deg))
        R_tilt, _ = cv2.Rodrigues(axis * tilt)
        R_roll, _ = cv2.Rodrigues(np.array([0.0, 0.0, rng.uniform(-0.5, 0.5)]))
        R = R_tilt @ R_roll
        z = rng.uniform(*distance)
        centre = np.array([rng.uniform(-0.25, 0.25) * z, rng.uniform(-0.18, 0.18) * z, z])
        t = centre - R @ np.array([cx, cy, 0.0])  # board centre at `centre`
        out.append(make_T(R, t))
    return out


PANDA_READY = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785])  # rad, TCP above the table in front of the base


@dataclass
class HandEyeScene:
    """A known hand-eye setup on the real arm model: joint samples around `q0`, the end-effector poses from the
    URDF (calibration.poses.ArmFK) and the board pose each camera view sees.

    eye_to_hand: the camera stands `distance` metres from the end effector's start, the board is fixed to the
    end effector (centred on the TCP, facing the camera at q0). eye_in_hand: the camera sits 6 cm off the TCP
    looking along its z axis, the board lies still in the base frame `distance` metres ahead of it at q0."""

    mount: str
    T_camera: np.ndarray     # truth: T_base_camera (eye_to_hand) or T_ee_camera (eye_in_hand)
    T_board: np.ndarray      # truth: T_ee_board (eye_to_hand) or T_base_board (eye_in_hand)
    q: np.ndarray            # (N, 7) joint samples
    T_base_ee: np.ndarray    # (N, 4, 4)
    T_cam_board: np.ndarray  # (N, 4, 4) truth of each view

    @classmethod
    def make(cls, fk, board: Board, mount: str, n: int, rng: np.random.Generator, q0: np.ndarray = PANDA_READY,
             joint_spread: float | np.ndarray | None = None, distance: float = 0.55, axes: str = "all",
             camera: SyntheticCamera | None = None) -> "HandEyeScene":
        """joint_spread: uniform +/- range per joint (rad); default: what keeps the board in view of a 60 degree
        camera while the wrist turns about every axis. camera: keep only samples in which it sees the whole board
        facing it (within 55 degrees). axes='all': every joint varies; 'last' (degenerate):
        only the last joint turns (one rotation axis)."""
        if joint_spread is None:
            joint_spread = np.array([0.3, 0.3, 0.3, 0.3, 0.4, 0.4, 0.8])
        T0 = fk.pose(q0)
        centre = np.array([*[s / 2 for s in board.size_m], 0.0])
        if mount == "eye_to_hand":
            eye = T0[:3, 3] + distance * np.array([0.55, 0.55, 0.63]) / np.linalg.norm([0.55, 0.55, 0.63])
            T_base_cam = look_at(eye, T0[:3, 3])
            T_base_board0 = T_base_cam @ make_T(np.eye(3), [0, 0, distance]) @ make_T(np.eye(3), -centre)
            T_camera, T_board = T_base_cam, inv(T0) @ T_base_board0
        elif mount == "eye_in_hand":
            R_ee_cam, _ = cv2.Rodrigues(np.array([0.0, 0.0, np.pi / 2]))
            T_ee_cam = make_T(R_ee_cam @ cv2.Rodrigues(np.array([0.15, -0.1, 0.0]))[0], [0.06, 0.0, 0.02])
            T_cam_board0 = make_T(np.eye(3), [0, 0, distance]) @ make_T(np.eye(3), -centre)
            T_camera, T_board = T_ee_cam, T0 @ T_ee_cam @ T_cam_board0
        else:
            raise ValueError(f"mount {mount!r}")
        qs, views = [], []
        for _ in range(200 * n):  # joint samples whose view shows the whole board, facing the camera
            q = q0.copy()
            if axes == "all":
                q += rng.uniform(-joint_spread, joint_spread, size=len(q0))
            elif axes == "last":
                q[-1] += rng.uniform(-1.0, 1.0)
            else:
                raise ValueError(f"axes {axes!r}")
            A = fk.pose(q)
            T_cam_board = inv(T_camera) @ A @ T_board if mount == "eye_to_hand" else inv(A @ T_camera) @ T_board
            if camera is None or _sees_board(camera, board, T_cam_board):
                qs.append(q)
                views.append(T_cam_board)
            if len(qs) == n:
                break
        if len(qs) < n:
            raise RuntimeError(f"only {len(qs)} of {n} joint samples show the board; lower joint_spread")
        q = np.asarray(qs)
        T_base_ee = fk.poses(q)
        return cls(mount, T_camera, T_board, q, T_base_ee, np.asarray(views))


def _sees_board(camera: SyntheticCamera, board: Board, T_cam_board: np.ndarray, margin_px: float = 8.0) -> bool:
    if T_cam_board[2, 2] < np.cos(np.radians(55.0)) or T_cam_board[2, 3] <= 0.1:
        return False
    corners = np.array([[0, 0, 0], [board.size_m[0], 0, 0], [0, board.size_m[1], 0], [*board.size_m, 0]])
    px = camera.project(corners, T_cam_board)
    w, h = camera.size
    return bool(((px >= margin_px) & (px <= [w - margin_px, h - margin_px])).all())
