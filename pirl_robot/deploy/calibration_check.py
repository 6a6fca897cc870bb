"""The deploy node compares the camera calibration a bundle was trained with against the live camera.

    pirl export CKPT bundles/b --camera-calibration base_camera=calib/base_camera.yaml     # the bundle carries it
    deploy_node: camera_calibrations: ["base_camera=calib/base_camera.yaml"]   # this robot's calibration (pose)
                 calibration_check: warn | refuse | off

Live intrinsics come from the camera driver where it reports them (RealSense: read from the device; a ROS image
topic: the driver's CameraInfo), else from this robot's calibration file; the live pose from that file (the
configured pose). Compared per camera:

    intrinsics + distortion: the largest pixel shift over a 9 x 9 grid of the image between where the two
        calibrations put the same ray, at the bundle calibration's resolution: tolerance 3 px
        (about 0.3 px in a 64 px policy image);
    camera pose (T_base_camera): translation tolerance 10 mm, rotation 1 degree.

Beyond a tolerance the node logs a warning, or refuses to configure with `calibration_check: refuse`.
A camera without a bundle calibration, or without any live calibration, is reported (warned), never silently
passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INTRINSICS_PX = 3.0
TRANSLATION_MM = 10.0
ROTATION_DEG = 1.0
MODES = ("warn", "refuse", "off")


class CalibrationMismatch(ValueError):
    """The live camera differs from the bundle's calibration beyond tolerance (calibration_check: refuse)."""


@dataclass(frozen=True)
class CameraComparison:
    camera: str
    pixel_shift_px: float | None       # intrinsics + distortion, at the bundle calibration's resolution
    translation_mm: float | None
    rotation_deg: float | None
    live_source: str

    @property
    def problems(self) -> list[str]:
        out = []
        if self.pixel_shift_px is not None and self.pixel_shift_px > INTRINSICS_PX:
            out.append(f"intrinsics differ: up to {self.pixel_shift_px:.1f} px (tolerance {INTRINSICS_PX} px)")
        if self.translation_mm is not None and self.translation_mm > TRANSLATION_MM:
            out.append(f"camera moved {self.translation_mm:.1f} mm (tolerance {TRANSLATION_MM} mm)")
        if self.rotation_deg is not None and self.rotation_deg > ROTATION_DEG:
            out.append(f"camera turned {self.rotation_deg:.2f} deg (tolerance {ROTATION_DEG} deg)")
        return out

    def line(self) -> str:
        parts = [f"{k} {v}" for k, v in (("shift", _fmt(self.pixel_shift_px, "px")),
                                          ("moved", _fmt(self.translation_mm, "mm")),
                                          ("turned", _fmt(self.rotation_deg, "deg")))]
        verdict = "; ".join(self.problems) or "within tolerance"
        return f"camera {self.camera!r} vs bundle calibration ({self.live_source}): {', '.join(parts)}: {verdict}"


def _fmt(x: float | None, unit: str) -> str:
    return "n/a" if x is None else f"{x:.2f} {unit}"


def pixel_shift(trained, live) -> float:
    """Largest shift (px, at `trained`'s resolution) between where two calibrations put the same ray."""
    import cv2

    if abs(trained.width / trained.height - live.width / live.height) > 1e-3:
        return float("inf")  # another aspect ratio: a different sensor mode, not comparable
    live = live.scaled(trained.width, trained.height)
    u, v = np.meshgrid(np.linspace(0, trained.width - 1, 9), np.linspace(0, trained.height - 1, 9))
    px = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
    rays = cv2.undistortPoints(px, trained.K, trained.dist).reshape(-1, 2)
    pts = np.c_[rays, np.ones(len(rays))]
    back, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), live.K, live.dist)
    return float(np.max(np.linalg.norm(back.reshape(-1, 2) - px.reshape(-1, 2), axis=1)))


def compare(camera: str, trained, live, live_source: str) -> CameraComparison:
    from calibration.poses import inv, rotation_angle

    shift = pixel_shift(trained, live)
    t_mm = r_deg = None
    if trained.T_parent_camera is not None and live.T_parent_camera is not None:
        if trained.mount != live.mount:
            t_mm = r_deg = float("inf")
        else:
            d = inv(trained.T_parent_camera) @ live.T_parent_camera
            t_mm, r_deg = 1e3 * float(np.linalg.norm(d[:3, 3])), float(np.degrees(rotation_angle(d[:3, :3])))
    return CameraComparison(camera, shift, t_mm, r_deg, live_source)


def device_calibration(intrinsics: dict, base):
    """A driver's live intrinsics (RealSense: read from the device; ROS: CameraInfo) on top of this robot's
    calibration (for its pose)."""
    from dataclasses import replace

    K = np.array([[intrinsics["fx"], 0.0, intrinsics["ppx"]], [0.0, intrinsics["fy"], intrinsics["ppy"]],
                  [0.0, 0.0, 1.0]])
    dist = np.asarray(intrinsics.get("coeffs") or [0.0] * 5, dtype=np.float64)
    dist = dist if len(dist) in (4, 5, 8, 12, 14) else dist[:5]  # OpenCV's lengths; RealSense gives 5
    return replace(base, width=int(intrinsics["width"]), height=int(intrinsics["height"]), K=K, dist=dist)


def parse_calibration_entries(entries: list[str]) -> dict[str, str]:
    out = {}
    for e in entries:
        name, sep, path = e.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"camera_calibrations entry {e!r} must look like 'camera=path/to/calibration.yaml'")
        out[name] = path
    return out


def check_cameras(bundle_calibrations: dict, live_files: dict[str, str], cameras: dict, mode: str
                  ) -> list[tuple[bool, str]]:
    """Compare every policy camera; returns (within tolerance, log line) per camera, raises CalibrationMismatch in
    'refuse' mode.

    bundle_calibrations: camera -> CalibrationFile the bundle carries; live_files: camera -> this robot's
    calibration file (node parameter); cameras: camera -> the connected driver (for device intrinsics)."""
    from calibration.calib_file import load_calibration

    from pirl_robot.deploy.safety_hook import resolve_path

    if mode == "off":
        return []
    lines, bad = [], []
    for name in sorted(set(cameras) | set(bundle_calibrations)):
        trained = bundle_calibrations.get(name)
        if trained is None:
            lines.append((False, f"camera {name!r}: the bundle carries no calibration; nothing to compare"))
            continue
        base = load_calibration(resolve_path(live_files[name])) if name in live_files else None
        device = getattr(cameras.get(name), "intrinsics", None)
        origin = (device or {}).get("source", "device intrinsics")
        if device and base is not None:
            live, source = device_calibration(device, base), f"{origin} + configured pose"
        elif device:
            from calibration.calib_file import CalibrationFile

            live = device_calibration(device, CalibrationFile(name, 1, 1, np.eye(3), np.zeros(5)))
            source = f"{origin}, no configured pose"
        elif base is not None:
            live, source = base, f"configured calibration {live_files[name]}"
        else:
            lines.append((False, f"camera {name!r}: no live calibration (set camera_calibrations, or use a driver "
                                 f"that reports its own: RealSense, a ROS topic with CameraInfo); the bundle's was "
                                 f"not checked"))
            continue
        c = compare(name, trained, live, source)
        lines.append((not c.problems, c.line()))
        bad += c.problems
    if bad and mode == "refuse":
        raise CalibrationMismatch("camera calibration differs from the bundle's: " +
                                  "; ".join(line for ok, line in lines if not ok))
    return lines
