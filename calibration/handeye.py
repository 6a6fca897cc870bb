"""Hand-eye calibration from (end-effector pose, board pose in the camera) pairs, with every OpenCV method.

    res = solve_hand_eye(T_base_ee, T_cam_board, mount="eye_to_hand")
    res.T            # eye_to_hand: T_base_camera (camera in the robot base frame); eye_in_hand: T_ee_camera
    res.best, res.table()                         # the method with the smallest residual, and all of them

eye_in_hand: the camera rides on the end effector, the board stands still in the robot base frame.
eye_to_hand: the camera stands still, the board is fixed to the end effector.
Methods: cv2.calibrateHandEye (TSAI, PARK, HORAUD, ANDREFF, DANIILIDIS) and cv2.calibrateRobotWorldHandEye
(SHAH, LI). Each method's answer is scored the same way: the transform that should be constant over the poses
(eye_in_hand: the board in the base frame; eye_to_hand: the board on the end effector) is computed per pose
through the answer; its spread (translation RMS in mm, rotation RMS in degrees) is the residual.

Refused with a `HandEyeError` that says what to capture: fewer than 3 pairs, end-effector rotations all about one
axis (the rotation about that axis leaves the translation along it undetermined), or rotations too small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from calibration.poses import inv, make_T, mean_rotation, rotation_angle, rotation_axis_angle

MOUNTS = ("eye_in_hand", "eye_to_hand")
HAND_EYE_METHODS = {"TSAI": cv2.CALIB_HAND_EYE_TSAI, "PARK": cv2.CALIB_HAND_EYE_PARK,
                    "HORAUD": cv2.CALIB_HAND_EYE_HORAUD, "ANDREFF": cv2.CALIB_HAND_EYE_ANDREFF,
                    "DANIILIDIS": cv2.CALIB_HAND_EYE_DANIILIDIS}
ROBOT_WORLD_METHODS = {"SHAH": cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH, "LI": cv2.CALIB_ROBOT_WORLD_HAND_EYE_LI}
METHODS = tuple(HAND_EYE_METHODS) + tuple(ROBOT_WORLD_METHODS)
MIN_PAIRS = 3
MIN_ROTATION_DEG = 5.0     # the largest relative rotation between two poses must reach this
MIN_SECOND_AXIS = 0.05     # second / first eigenvalue of the rotation-axis scatter; below: one axis only


class HandEyeError(ValueError):
    """The pose set cannot determine the hand-eye transform; the message says what to capture."""


@dataclass(frozen=True)
class MethodResult:
    T: np.ndarray              # camera pose: T_ee_camera (eye_in_hand) or T_base_camera (eye_to_hand)
    T_board: np.ndarray        # the constant board pose: T_base_board (eye_in_hand) or T_ee_board (eye_to_hand)
    translation_rms_mm: float
    rotation_rms_deg: float
    reprojection_px: float | None = None  # RMS over every corner through T and T_board (with observations)


@dataclass
class HandEyeResult:
    mount: str
    pairs: int
    methods: dict[str, MethodResult]
    best: str
    failed: dict[str, str] = field(default_factory=dict)  # method -> why it gave no answer

    @property
    def T(self) -> np.ndarray:
        return self.methods[self.best].T

    @property
    def parent_frame(self) -> str:
        return "end_effector" if self.mount == "eye_in_hand" else "base"

    def table(self) -> str:
        lines = [f"hand-eye ({self.mount}, {self.pairs} pose pairs); residual = spread of the "
                 f"{'board in the base frame' if self.mount == 'eye_in_hand' else 'board on the end effector'}",
                 "| method | translation RMS (mm) | rotation RMS (deg) | reprojection RMS (px) | camera position (m) |",
                 "|---|---|---|---|---|"]
        for name, m in sorted(self.methods.items(), key=lambda kv: (kv[1].reprojection_px or 0,
                                                                     kv[1].translation_rms_mm)):
            mark = " (best)" if name == self.best else ""
            rp = "-" if m.reprojection_px is None else f"{m.reprojection_px:.3f}"
            lines.append(f"| {name}{mark} | {m.translation_rms_mm:.3f} | {m.rotation_rms_deg:.4f} | {rp} | "
                         f"{np.array2string(m.T[:3, 3], precision=4)} |")
        lines += [f"| {name} | failed: {why} | | | |" for name, why in self.failed.items()]
        return "\n".join(lines)


def check_pose_set(T_base_ee: Sequence[np.ndarray]) -> None:
    """Refuse pose sets that cannot determine a hand-eye transform (see the module docstring)."""
    n = len(T_base_ee)
    if n < MIN_PAIRS:
        raise HandEyeError(f"hand-eye needs at least {MIN_PAIRS} pose pairs (10-20 recommended), got {n}")
    scatter, largest = np.zeros((3, 3)), 0.0
    for i in range(n):
        for j in range(i + 1, n):
            axis, angle = rotation_axis_angle((inv(T_base_ee[i]) @ T_base_ee[j])[:3, :3])
            largest = max(largest, angle)
            scatter += np.sin(angle / 2) ** 2 * np.outer(axis, axis)
    if np.degrees(largest) < MIN_ROTATION_DEG:
        raise HandEyeError(f"the end effector barely rotates between poses (largest relative rotation "
                           f"{np.degrees(largest):.1f} deg < {MIN_ROTATION_DEG} deg): rotate the wrist 15-45 degrees "
                           f"about different axes between poses")
    w, v = np.linalg.eigh(scatter)
    if w[1] < MIN_SECOND_AXIS * w[2]:
        axis = np.round(v[:, 2] * np.sign(v[np.argmax(np.abs(v[:, 2])), 2]), 3)
        raise HandEyeError(f"all end-effector rotations are about one axis ({axis.tolist()} in the end-effector "
                           f"frame; second axis {w[1] / w[2]:.3f} of the first < {MIN_SECOND_AXIS}): the translation "
                           f"along it is undetermined. Rotate the wrist about at least two different axes.")


@dataclass(frozen=True)
class Observations:
    """The corners behind the board poses, for reprojection scores and the joint refinement."""

    object_points: Sequence[np.ndarray]  # per pose (N_i, 3), board frame (m)
    image_points: Sequence[np.ndarray]   # per pose (N_i, 2), px
    K: np.ndarray
    dist: np.ndarray


def solve_hand_eye(T_base_ee: Sequence[np.ndarray], T_cam_board: Sequence[np.ndarray], mount: str,
                   methods: Sequence[str] = METHODS, observations: Observations | None = None) -> HandEyeResult:
    """observations: with them, every answer is also scored by its corner reprojection error, and REFINED (the
    best closed-form answer refined by least squares on the reprojection error of every corner, camera pose
    and board pose together) joins the methods; the best is then the smallest reprojection error."""
    if mount not in MOUNTS:
        raise HandEyeError(f"mount {mount!r} not in {MOUNTS}")
    if len(T_base_ee) != len(T_cam_board):
        raise HandEyeError(f"{len(T_base_ee)} end-effector poses but {len(T_cam_board)} board poses")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise HandEyeError(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    A = [np.asarray(T, dtype=np.float64) for T in T_base_ee]
    B = [np.asarray(T, dtype=np.float64) for T in T_cam_board]
    check_pose_set(A)
    robot = A if mount == "eye_in_hand" else [inv(T) for T in A]  # what OpenCV calls gripper2base
    results, failed = {}, {}
    for name in methods:
        try:
            T = _solve(name, robot, B, mount)
        except cv2.error as e:
            failed[name] = str(e).strip().splitlines()[-1]
            continue
        if not np.isfinite(T).all():
            failed[name] = "non-finite result"
            continue
        results[name] = _score(T, A, B, mount, observations)
    if not results:
        raise HandEyeError(f"every method failed: {failed}")
    best = min(results, key=lambda k: (results[k].translation_rms_mm, results[k].rotation_rms_deg))
    if observations is not None:
        start = results[best]
        T, Z = _refine(start.T, start.T_board, A, mount, observations)
        results["REFINED"] = _score(T, A, B, mount, observations, Z)
        best = min(results, key=lambda k: results[k].reprojection_px)
    return HandEyeResult(mount, len(A), results, best, failed)


def _solve(name: str, gripper2base: list[np.ndarray], target2cam: list[np.ndarray], mount: str) -> np.ndarray:
    if name in HAND_EYE_METHODS:
        R, t = cv2.calibrateHandEye([T[:3, :3] for T in gripper2base], [T[:3, 3] for T in gripper2base],
                                    [T[:3, :3] for T in target2cam], [T[:3, 3] for T in target2cam],
                                    method=HAND_EYE_METHODS[name])
        return make_T(R, t)  # cam2gripper (eye_in_hand) / cam2base (eye_to_hand): the camera pose
    # T_cam_board = T_cam_G @ T_G_B @ T_B_board with (G, B) = (ee, base) eye_in_hand, (base, ee) eye_to_hand
    base2gripper = [inv(T) for T in gripper2base]
    _, _, R_g2c, t_g2c = cv2.calibrateRobotWorldHandEye(
        [T[:3, :3] for T in target2cam], [T[:3, 3] for T in target2cam],
        [T[:3, :3] for T in base2gripper], [T[:3, 3] for T in base2gripper], method=ROBOT_WORLD_METHODS[name])
    return inv(make_T(R_g2c, t_g2c))


def board_chain(T: np.ndarray, T_base_ee: Sequence[np.ndarray], T_cam_board: Sequence[np.ndarray],
                mount: str) -> list[np.ndarray]:
    """Per pose, the board pose that should stay constant, through camera pose T."""
    if mount == "eye_in_hand":
        return [A @ T @ B for A, B in zip(T_base_ee, T_cam_board)]
    return [inv(A) @ T @ B for A, B in zip(T_base_ee, T_cam_board)]


def _view(T: np.ndarray, Z: np.ndarray, A: np.ndarray, mount: str) -> np.ndarray:
    """T_camera_board predicted for end-effector pose A from camera pose T and board pose Z."""
    return inv(A @ T) @ Z if mount == "eye_in_hand" else inv(T) @ A @ Z


def _reprojection(T: np.ndarray, Z: np.ndarray, A: list[np.ndarray], mount: str, obs: Observations) -> np.ndarray:
    out = []
    for a, obj, img in zip(A, obs.object_points, obs.image_points):
        V = _view(T, Z, a, mount)
        rvec, _ = cv2.Rodrigues(V[:3, :3])
        px, _ = cv2.projectPoints(np.asarray(obj, dtype=np.float64), rvec, V[:3, 3], obs.K, obs.dist)
        out.append((px.reshape(-1, 2) - img).ravel())
    return np.concatenate(out)


def _refine(T: np.ndarray, Z: np.ndarray, A: list[np.ndarray], mount: str, obs: Observations
            ) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import least_squares

    def unpack(x):
        return (make_T(cv2.Rodrigues(x[0:3])[0], x[3:6]), make_T(cv2.Rodrigues(x[6:9])[0], x[9:12]))

    x0 = np.concatenate([cv2.Rodrigues(T[:3, :3])[0].ravel(), T[:3, 3], cv2.Rodrigues(Z[:3, :3])[0].ravel(), Z[:3, 3]])
    sol = least_squares(lambda x: _reprojection(*unpack(x), A, mount, obs), x0, method="lm", x_scale="jac")
    return unpack(sol.x)


def _score(T: np.ndarray, A: list[np.ndarray], B: list[np.ndarray], mount: str, obs: Observations | None = None,
           Z: np.ndarray | None = None) -> MethodResult:
    chain = board_chain(T, A, B, mount)
    t = np.array([c[:3, 3] for c in chain])
    R = mean_rotation([c[:3, :3] for c in chain])
    t_mean = t.mean(axis=0)
    dt = np.linalg.norm(t - t_mean, axis=1)
    dr = np.array([np.degrees(rotation_angle(R.T @ c[:3, :3])) for c in chain])
    Z = make_T(R, t_mean) if Z is None else Z
    reproj = None
    if obs is not None:
        r = _reprojection(T, Z, A, mount, obs).reshape(-1, 2)
        reproj = float(np.sqrt(np.mean(np.sum(r ** 2, axis=1))))
    return MethodResult(T, Z, float(1e3 * np.sqrt(np.mean(dt ** 2))), float(np.sqrt(np.mean(dr ** 2))), reproj)
