"""The calibration file: one camera's intrinsics and pose, as YAML.

    cal = load_calibration("calib/base_camera.yaml")
    cal.K, cal.dist, cal.width, cal.height
    cal.T_base_camera              # eye_to_hand: the camera optical frame in the robot base frame (4x4, metres)
    cal.project(points_base)       # (N, 3) base-frame points -> (N, 2) pixels, distortion included
    cal.save("calib/base_camera.yaml")

Layout: the top-level keys are ROS camera_info YAML (camera_calibration_parsers: image_width, image_height,
camera_name, camera_matrix, distortion_model, distortion_coefficients, rectification_matrix, projection_matrix),
so camera_info_manager and ROS camera drivers read the file as is; everything else sits under ``pirl:``:

    pirl:
      format: pirl-calibration/1
      units: {length: m, angle: rad, image: px, pixel_origin: centre of the top-left pixel}
      camera_frame: base_camera_optical_frame   # OpenCV optical frame: x right, y down, z forward
      mount: eye_to_hand                        # or eye_in_hand (then parent_frame is the end-effector link)
      parent_frame: panda_link0
      pose: {translation: [x, y, z], quaternion_xyzw: [x, y, z, w]}   # T_parent_camera
      intrinsics: {rms_px, views_used, views_rejected: [{view, reason}], std_px: {fx, fy, cx, cy}}
      hand_eye: {method, pairs, methods: {NAME: {translation_rms_mm, rotation_rms_deg}}}
      board: {...}                              # the target used
      created: ISO-8601 time
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from calibration.poses import inv, make_T, quat_to_R, quat_xyzw

FORMAT = "pirl-calibration/1"
MOUNTS = ("eye_to_hand", "eye_in_hand", "none")
UNITS = {"length": "m", "angle": "rad", "image": "px", "pixel_origin": "centre of the top-left pixel"}


class CalibrationFileError(ValueError):
    """The calibration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class CalibrationFile:
    camera_name: str
    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray
    distortion_model: str = "plumb_bob"
    mount: str = "none"                  # no pose yet (intrinsics only)
    parent_frame: str = ""
    T_parent_camera: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # intrinsics / hand_eye / board records

    @property
    def camera_frame(self) -> str:
        return f"{self.camera_name}_optical_frame"

    @property
    def T_base_camera(self) -> np.ndarray:
        if self.mount != "eye_to_hand" or self.T_parent_camera is None:
            raise CalibrationFileError(f"{self.camera_name}: the camera is not calibrated as a fixed camera in the "
                                       f"robot base frame (mount {self.mount!r})")
        return self.T_parent_camera

    def with_pose(self, mount: str, parent_frame: str, T: np.ndarray, hand_eye: dict | None = None
                  ) -> "CalibrationFile":
        extra = dict(self.extra)
        if hand_eye is not None:
            extra["hand_eye"] = hand_eye
        return replace(self, mount=mount, parent_frame=parent_frame, T_parent_camera=np.asarray(T), extra=extra)

    def scaled(self, width: int, height: int) -> "CalibrationFile":
        """The same camera with its image resized to width x height (what the deploy node feeds a policy)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.copy()
        K[0, 0], K[0, 2] = K[0, 0] * sx, (K[0, 2] + 0.5) * sx - 0.5
        K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
        return replace(self, width=width, height=height, K=K)

    def project(self, points_parent: np.ndarray) -> np.ndarray:
        """(N, 3) points in the parent frame (base for eye_to_hand) -> (N, 2) pixels."""
        if self.T_parent_camera is None:
            raise CalibrationFileError(f"{self.camera_name}: no camera pose in this calibration")
        T = inv(self.T_parent_camera)
        rvec, _ = cv2.Rodrigues(T[:3, :3])
        px, _ = cv2.projectPoints(np.asarray(points_parent, dtype=np.float64).reshape(-1, 3), rvec, T[:3, 3],
                                  self.K, self.dist)
        return px.reshape(-1, 2)

    # --- YAML ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        P = np.zeros((3, 4))
        P[:, :3] = self.K
        d: dict[str, Any] = {
            "image_width": int(self.width), "image_height": int(self.height), "camera_name": self.camera_name,
            "camera_matrix": _mat(self.K), "distortion_model": self.distortion_model,
            "distortion_coefficients": _mat(self.dist.reshape(1, -1)), "rectification_matrix": _mat(np.eye(3)),
            "projection_matrix": _mat(P)}
        pirl: dict[str, Any] = {"format": FORMAT, "units": dict(UNITS), "camera_frame": self.camera_frame,
                                "mount": self.mount}
        if self.T_parent_camera is not None:
            T = self.T_parent_camera
            pirl["parent_frame"] = self.parent_frame
            pirl["pose"] = {"translation": [float(x) for x in T[:3, 3]],
                            "quaternion_xyzw": [float(x) for x in quat_xyzw(T[:3, :3])]}
        pirl.update(_plain(self.extra))
        pirl.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        d["pirl"] = pirl
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        head = ("# Camera calibration (pirl calibrate; docs/calibration.md). Top-level keys: ROS camera_info YAML.\n"
                "# pirl.pose is T_parent_camera: the OpenCV optical frame (x right, y down, z forward) in\n"
                "# pirl.parent_frame, metres; quaternion in ROS order (x, y, z, w).\n")
        path.write_text(head + yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110))
        return path

    @classmethod
    def from_dict(cls, d: Any, where: str = "calibration") -> "CalibrationFile":
        if not isinstance(d, dict):
            raise CalibrationFileError(f"{where}: expected a mapping (camera_info YAML)")
        for key in ("image_width", "image_height", "camera_matrix", "distortion_coefficients"):
            if key not in d:
                raise CalibrationFileError(f"{where}: missing {key!r} (not a camera_info / pirl calibration file)")
        K = _read_mat(d["camera_matrix"], f"{where}.camera_matrix", (3, 3))
        dist = _read_mat(d["distortion_coefficients"], f"{where}.distortion_coefficients", None).reshape(-1)
        model = d.get("distortion_model", "plumb_bob")
        if model not in ("plumb_bob", "rational_polynomial"):
            raise CalibrationFileError(f"{where}: distortion_model {model!r} is not supported "
                                       f"(plumb_bob, rational_polynomial)")
        w, h = d["image_width"], d["image_height"]
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise CalibrationFileError(f"{where}: image_width/height must be positive integers, got {w}, {h}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise CalibrationFileError(f"{where}: focal lengths must be > 0, got {K[0, 0]}, {K[1, 1]}")
        pirl = dict(d.get("pirl") or {})
        if pirl and pirl.get("format") != FORMAT:
            raise CalibrationFileError(f"{where}: pirl.format is {pirl.get('format')!r}, expected {FORMAT!r}")
        mount = pirl.pop("mount", "none")
        if mount not in MOUNTS:
            raise CalibrationFileError(f"{where}: pirl.mount {mount!r} not in {MOUNTS}")
        T = None
        pose = pirl.pop("pose", None)
        if pose is not None:
            t, q = pose.get("translation"), pose.get("quaternion_xyzw")
            if not (_finite_list(t, 3) and _finite_list(q, 4)) or np.linalg.norm(q) < 1e-9:
                raise CalibrationFileError(f"{where}: pirl.pose needs translation [x, y, z] (m) and a unit "
                                           f"quaternion_xyzw [x, y, z, w]")
            T = make_T(quat_to_R(q), t)
        elif mount != "none":
            raise CalibrationFileError(f"{where}: pirl.mount is {mount!r} but there is no pirl.pose")
        parent = pirl.pop("parent_frame", "")
        for k in ("format", "units", "camera_frame"):
            pirl.pop(k, None)
        return cls(str(d.get("camera_name") or "camera"), w, h, K, dist, model, mount, parent, T, pirl)


def load_calibration(path: str | Path) -> CalibrationFile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CalibrationFileError(f"cannot read calibration {str(path)!r}: {e}") from e
    return CalibrationFile.from_dict(data, str(path))


def _mat(m: np.ndarray) -> dict[str, Any]:
    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    return {"rows": int(m.shape[0]), "cols": int(m.shape[1]), "data": [float(x) for x in m.ravel()]}


def _read_mat(d: Any, where: str, shape: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(d, dict) or not {"rows", "cols", "data"} <= set(d):
        raise CalibrationFileError(f"{where}: expected {{rows, cols, data}}")
    data = d["data"]
    if not _finite_list(data, d["rows"] * d["cols"]):
        raise CalibrationFileError(f"{where}: data must hold rows x cols = {d['rows'] * d['cols']} finite numbers")
    m = np.asarray(data, dtype=np.float64).reshape(d["rows"], d["cols"])
    if shape is not None and m.shape != shape:
        raise CalibrationFileError(f"{where}: shape {m.shape}, expected {shape}")
    return m


def _finite_list(x: Any, n: int) -> bool:
    return (isinstance(x, (list, tuple)) and len(x) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in x))


def _plain(x: Any) -> Any:
    """numpy values -> YAML-safe python."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    return x
