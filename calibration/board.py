"""The calibration target: a ChArUco board (default) or a plain checkerboard, detected with OpenCV.

    board = Board()                                   # 7 x 5 squares of 40 mm, 30 mm DICT_5X5_100 markers
    det = board.detect(image)                         # Detection: object points (m), image points (px), ids
    if det.problem: print(det.problem)                # why this view gave nothing usable
    cv2.imwrite("board.png", board.image(pixels_per_metre=5000))

Board frame: origin at the board's top-left outer corner, x along the squares_x side, y along the squares_y side
(downwards in `image()`), z into the board; corners lie at z = 0. ChArUco corners are identified (a partial view
still gives a pose); a checkerboard must be seen whole and its pose is ambiguous under a 180 degree turn, so
hand-eye calibration needs ChArUco.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np

KINDS = ("charuco", "checkerboard")


class BoardError(ValueError):
    """The board description is invalid."""


@dataclass(frozen=True)
class Detection:
    """Corners of one view: object_points (N, 3) metres in the board frame, image_points (N, 2) px."""

    object_points: np.ndarray
    image_points: np.ndarray
    ids: np.ndarray | None = None
    problem: str = ""  # non-empty: nothing usable (no board, too few corners...)

    @property
    def count(self) -> int:
        return len(self.image_points)


@dataclass(frozen=True)
class Board:
    kind: str = "charuco"
    squares_x: int = 7
    squares_y: int = 5
    square_length: float = 0.04   # m
    marker_length: float = 0.03   # m (ChArUco only)
    dictionary: str = "DICT_5X5_100"
    min_corners: int = 6          # fewer corners in a view: the view is not used
    _cv: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BoardError(f"board kind {self.kind!r} not in {KINDS}")
        if self.squares_x < 3 or self.squares_y < 3:
            raise BoardError(f"a board needs at least 3 x 3 squares, got {self.squares_x} x {self.squares_y}")
        if not self.square_length > 0:
            raise BoardError(f"square_length must be > 0 (metres), got {self.square_length}")
        if self.kind == "charuco":
            if not 0 < self.marker_length < self.square_length:
                raise BoardError(f"marker_length {self.marker_length} must be in (0, square_length "
                                 f"{self.square_length})")
            if not hasattr(cv2.aruco, self.dictionary):
                raise BoardError(f"unknown ArUco dictionary {self.dictionary!r} (e.g. DICT_5X5_100)")
            d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
            markers = (self.squares_x * self.squares_y) // 2
            if markers > d.bytesList.shape[0]:
                raise BoardError(f"{self.squares_x} x {self.squares_y} ChArUco needs {markers} markers, "
                                 f"{self.dictionary} has {d.bytesList.shape[0]}")
            cv = cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_length, self.marker_length, d)
            object.__setattr__(self, "_cv", cv)

    # --- description ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Board":
        allowed = {"kind", "squares_x", "squares_y", "square_length", "marker_length", "dictionary", "min_corners"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise BoardError(f"unknown board key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        if self.kind == "checkerboard":
            d.pop("marker_length"), d.pop("dictionary")
        return d

    @property
    def corners(self) -> np.ndarray:
        """(N, 3) inner corners in the board frame (m), in id order: corner (i, j) has id j * (squares_x - 1) + i."""
        nx, ny = self.squares_x - 1, self.squares_y - 1
        i, j = np.meshgrid(np.arange(nx), np.arange(ny))
        pts = np.stack([(i.ravel() + 1) * self.square_length, (j.ravel() + 1) * self.square_length,
                        np.zeros(nx * ny)], axis=1)
        return pts

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_length, self.squares_y * self.square_length

    # --- detection ----------------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> Detection:
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if gray.dtype != np.uint8:
            raise BoardError(f"images must be 8-bit, got {gray.dtype}")
        if self.kind == "checkerboard":
            return self._detect_checkerboard(gray)
        corners, ids, _, marker_ids = cv2.aruco.CharucoDetector(self._cv).detectBoard(gray)
        if ids is None or len(ids) == 0:
            found = 0 if marker_ids is None else len(marker_ids)
            return _empty(f"no ChArUco corners found ({found} markers seen)")
        ids = ids.reshape(-1)
        img = _refine(gray, corners.reshape(-1, 2))
        obj = self.corners[ids]
        if len(ids) < self.min_corners:
            return Detection(obj, img, ids, f"only {len(ids)} corners (< min_corners {self.min_corners})")
        if _collinear(obj[:, :2]):
            return Detection(obj, img, ids, f"the {len(ids)} corners seen lie on one line (no pose from them)")
        return Detection(obj, img, ids)

    def _detect_checkerboard(self, gray: np.ndarray) -> Detection:
        pattern = (self.squares_x - 1, self.squares_y - 1)
        ok, corners = cv2.findChessboardCornersSB(gray, pattern, flags=cv2.CALIB_CB_ACCURACY)
        if not ok:
            return _empty(f"no {pattern[0]} x {pattern[1]} checkerboard found (a checkerboard must be seen whole)")
        return Detection(self.corners.copy(), corners.reshape(-1, 2).astype(np.float64), None)

    # --- printing -----------------------------------------------------------------------------------------------
    def image(self, pixels_per_metre: float = 5000.0, margin_px: int = 0) -> np.ndarray:
        """The board as a grayscale uint8 image at `pixels_per_metre` (print it at that scale: the squares must
        come out at square_length). With margin_px = 0 the image spans exactly the board (its frame's extent)."""
        w, h = (int(round(s * pixels_per_metre)) for s in self.size_m)
        if self.kind == "charuco":
            img = self._cv.generateImage((w, h), marginSize=0, borderBits=1)
        else:
            sq = pixels_per_metre * self.square_length
            v, u = np.mgrid[0:h, 0:w]
            img = np.where(((u // sq).astype(int) + (v // sq).astype(int)) % 2 == 0, 0, 255).astype(np.uint8)
        if margin_px:
            img = cv2.copyMakeBorder(img, margin_px, margin_px, margin_px, margin_px, cv2.BORDER_CONSTANT, value=255)
        return img


def _refine(gray: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """cv2.cornerSubPix on the ChArUco corners: the detector's own refinement leaves ~0.45 px of bias along both
    image axes (measured on rendered boards, tests/test_calibration_intrinsics.py); this removes it. The window
    stays inside a quarter of the smallest corner spacing."""
    pts = corners.astype(np.float32).reshape(-1, 1, 2)
    if len(pts) > 1:
        d = np.linalg.norm(corners[:, None] - corners[None], axis=2)
        spacing = float(np.min(d[d > 0])) if (d > 0).any() else 20.0
    else:
        spacing = 20.0
    win = int(max(2, min(5, spacing // 4)))
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-4)
    return cv2.cornerSubPix(gray, pts, (win, win), (-1, -1), crit).reshape(-1, 2).astype(np.float64)


def _empty(problem: str) -> Detection:
    return Detection(np.zeros((0, 3)), np.zeros((0, 2)), None, problem)


def _collinear(xy: np.ndarray) -> bool:
    """True when the points span less than a line's width in their second principal direction."""
    centred = xy - xy.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    return s[0] == 0 or s[1] / s[0] < 1e-3
