"""OpenCV / UVC camera (a /dev/videoN device, an index, or a video file/stream URL)."""

from __future__ import annotations

import cv2
import numpy as np

from pirl_robot.drivers.cameras.base import CameraError, PollingCamera


class OpenCVCamera(PollingCamera):
    def __init__(self, name: str, source: str | int, width: int | None = None, height: int | None = None,
                 fps: float | None = None, loop: bool = False):
        super().__init__(name)
        self.source = int(source) if isinstance(source, str) and source.isdigit() else source
        self.width, self.height, self.fps, self.loop = width, height, fps, loop
        self._cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            raise CameraError(f"camera {self.name!r}: OpenCV cannot open {self.source!r}")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                            (cv2.CAP_PROP_FPS, self.fps)):
            if value:
                cap.set(prop, value)
        self._cap = cap
        self._period = 1.0 / self.fps if self.fps and isinstance(self.source, str) else 0.0
        self._start_thread()

    def _grab(self):
        ok, bgr = self._cap.read()
        if not ok and self.loop:  # a video file used as a stand-in camera: start over
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok:
            return None
        if self._period:  # files decode faster than real time: pace them like a device
            self._stop.wait(self._period)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.width and self.height and rgb.shape[:2] != (self.height, self.width):
            rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(rgb), None

    def _close(self) -> None:
        self._stop_thread()
        if self._cap is not None:
            self._cap.release()
            self._cap = None
