"""Camera intrinsics (pinhole + distortion) from board views, with OpenCV's calibrateCameraExtended.

    views = [(name, board.detect(img)) for name, img in images]
    res = calibrate_intrinsics(views, image_size=(640, 480))
    res.K, res.dist, res.rms_px, res.rejected      # rejected: [(view name, why), ...]

A view is left out, with its reason, when the board is not found, too few corners are seen, the corners are
collinear, or (after a first fit) its reprojection error is an outlier: above max(outlier_px, 3 x the median
view's). The worst outlier goes first and the fit is redone, until none is left. The set is refused (a
`CalibrationError` that says what to do) with fewer than `min_views` usable views, or when the views are too
alike for the focal length to be determined: the board tilted less than 10 degrees about some axis in every view
(parallel planes leave focal length and distance interchangeable), or the focal length's standard deviation
above `max_focal_std` of its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from calibration.board import Detection
from calibration.poses import from_rvec_tvec

DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}
MIN_TILT_DEG = 10.0  # the views' board tilts must reach this about two independent axes


class CalibrationError(ValueError):
    """The views cannot give a trustworthy calibration; the message says why and what to capture instead."""


@dataclass
class IntrinsicsResult:
    K: np.ndarray                         # (3, 3)
    dist: np.ndarray                      # (5,) plumb_bob k1 k2 p1 p2 k3, or (8,) rational_polynomial
    image_size: tuple[int, int]           # (width, height)
    rms_px: float                         # over all corners of the views used
    per_view_px: dict[str, float]         # RMS reprojection error of each view used
    rejected: list[tuple[str, str]]       # (view, reason)
    std: dict[str, float]                 # standard deviations of fx, fy, cx, cy (px)
    board_poses: dict[str, np.ndarray] = field(default_factory=dict)  # view -> T_camera_board (4, 4)

    @property
    def distortion_model(self) -> str:
        return "plumb_bob" if len(self.dist) == 5 else "rational_polynomial"

    def summary(self) -> str:
        lines = [f"intrinsics from {len(self.per_view_px)} views ({len(self.rejected)} rejected), "
                 f"{self.image_size[0]}x{self.image_size[1]} px, reprojection RMS {self.rms_px:.3f} px",
                 f"  fx {self.K[0, 0]:.2f} +/- {self.std['fx']:.2f}  fy {self.K[1, 1]:.2f} +/- {self.std['fy']:.2f}  "
                 f"cx {self.K[0, 2]:.2f} +/- {self.std['cx']:.2f}  cy {self.K[1, 2]:.2f} +/- {self.std['cy']:.2f}",
                 f"  {self.distortion_model} {np.array2string(self.dist, precision=5, suppress_small=True)}"]
        lines += [f"  rejected {name}: {why}" for name, why in self.rejected]
        return "\n".join(lines)


def calibrate_intrinsics(views: Sequence[tuple[str, Detection]], image_size: tuple[int, int], *,
                         distortion_model: str = "plumb_bob", min_views: int = 6, outlier_px: float = 1.0,
                         max_focal_std: float = 0.02) -> IntrinsicsResult:
    if distortion_model not in DISTORTION_MODELS:
        raise CalibrationError(f"distortion_model {distortion_model!r} not in {list(DISTORTION_MODELS)}")
    rejected = [(name, det.problem) for name, det in views if det.problem]
    usable = [(name, det) for name, det in views if not det.problem]
    flags = cv2.CALIB_RATIONAL_MODEL if distortion_model == "rational_polynomial" else 0
    while True:
        if len(usable) < min_views:
            why = "; ".join(f"{n}: {r}" for n, r in rejected) or "none rejected"
            raise CalibrationError(f"only {len(usable)} usable views of {len(views)} (need at least {min_views}); "
                                   f"rejected: {why}. Capture more views of the whole board, tilted ~30 degrees "
                                   f"in different directions, covering the image corners.")
        obj = [d.object_points.astype(np.float32) for _, d in usable]
        img = [d.image_points.astype(np.float32) for _, d in usable]
        rms, K, dist, rvecs, tvecs, std_in, _, per_view = cv2.calibrateCameraExtended(
            obj, img, tuple(image_size), None, None, flags=flags)
        per_view = per_view.reshape(-1)
        limit = max(outlier_px, 3.0 * float(np.median(per_view)))
        worst = int(np.argmax(per_view))
        if per_view[worst] <= limit:
            break
        rejected.append((usable[worst][0], f"reprojection error {per_view[worst]:.2f} px above the outlier limit "
                                           f"{limit:.2f} px (max of {outlier_px} px and 3 x the median view)"))
        del usable[worst]
    std = dict(zip(("fx", "fy", "cx", "cy"), std_in.reshape(-1)[:4].tolist()))
    fx = float(K[0, 0])
    tilt = _tilt_spread(rvecs)
    if tilt < MIN_TILT_DEG:
        raise CalibrationError(f"the board faces the camera in every view (tilt spread {tilt:.1f} deg < "
                               f"{MIN_TILT_DEG} deg in some direction): the focal length cannot be told from the "
                               f"distance. Tilt the board ~30 degrees about different axes (left/right and up/down).")
    if std["fx"] > max_focal_std * fx:
        raise CalibrationError(f"focal length undetermined: fx {fx:.1f} +/- {std['fx']:.1f} px "
                               f"({100 * std['fx'] / fx:.1f}% > {100 * max_focal_std:.1f}%): the views are too "
                               f"alike (e.g. all facing the camera). Tilt the board ~30 degrees about different axes "
                               f"and move it across the image.")
    poses = {name: from_rvec_tvec(r, t) for (name, _), r, t in zip(usable, rvecs, tvecs)}
    return IntrinsicsResult(K, dist.reshape(-1)[: DISTORTION_MODELS[distortion_model]], tuple(image_size), float(rms),
                            {name: float(e) for (name, _), e in zip(usable, per_view)}, rejected, std, poses)


def board_pose(det: Detection, K: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, float]:
    """T_camera_board of one view with known intrinsics, and its reprojection RMS (px).
    IPPE (planar targets) then Levenberg-Marquardt refinement."""
    if det.problem:
        raise CalibrationError(f"no pose from this view: {det.problem}")
    obj, img = det.object_points.astype(np.float64), det.image_points.astype(np.float64)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        raise CalibrationError("solvePnP found no board pose")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, dist, rvec, tvec)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, dist)
    err = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
    return from_rvec_tvec(rvec, tvec), err


def _tilt_spread(rvecs) -> float:
    """The smallest board tilt (deg) the views reach about any in-image axis: from the scatter of the board
    normals' image-plane components (sin of the tilt, in its direction)."""
    v = np.array([cv2.Rodrigues(r)[0][:2, 2] for r in rvecs])
    lam = np.linalg.eigvalsh(v.T @ v)[0]
    return float(np.degrees(np.arcsin(min(1.0, np.sqrt(max(lam, 0.0))))))
