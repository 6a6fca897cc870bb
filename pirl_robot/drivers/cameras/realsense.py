"""Intel RealSense (pyrealsense2): colour + aligned depth, chosen by serial, intrinsics read from the device.

Needs the Debian package libusb-1.0-0 for pyrealsense2 to import.
"""

from __future__ import annotations

import numpy as np

from pirl_robot.drivers.cameras.base import CameraError, PollingCamera


def list_realsense_serials() -> list[str]:
    import pyrealsense2 as rs

    return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]


class RealSenseCamera(PollingCamera):
    def __init__(self, name: str, serial: str = "", width: int = 640, height: int = 480, fps: int = 30,
                 depth: bool = True, timeout_ms: int = 1000):
        super().__init__(name)
        self.serial, self.width, self.height, self.fps = serial, width, height, fps
        self.use_depth, self.timeout_ms = depth, timeout_ms
        self.intrinsics: dict | None = None
        self.depth_scale: float | None = None
        self._pipeline = None
        self._align = None

    def _open(self) -> None:
        import pyrealsense2 as rs

        serials = list_realsense_serials()
        if not serials:
            raise CameraError(f"camera {self.name!r}: no RealSense device connected")
        if self.serial and self.serial not in serials:
            raise CameraError(f"camera {self.name!r}: no RealSense with serial {self.serial!r}; found {serials}")
        if not self.serial and len(serials) > 1:
            raise CameraError(f"camera {self.name!r}: several RealSense devices {serials}; pick one by serial")
        cfg = rs.config()
        cfg.enable_device(self.serial or serials[0])
        cfg.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        if self.use_depth:
            cfg.enable_stream(rs.stream.depth, self.width, self.height, rs.format.z16, self.fps)
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(cfg)
        except RuntimeError as e:
            raise CameraError(f"camera {self.name!r}: RealSense refused {self.width}x{self.height}@{self.fps} ({e})")
        intr = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        self.intrinsics = {"width": intr.width, "height": intr.height, "fx": intr.fx, "fy": intr.fy,
                           "ppx": intr.ppx, "ppy": intr.ppy, "model": str(intr.model), "coeffs": list(intr.coeffs)}
        if self.use_depth:
            self.depth_scale = profile.get_device().first_depth_sensor().get_depth_scale()
            self._align = rs.align(rs.stream.color)  # depth pixels registered to colour pixels
        self._pipeline = pipeline
        self._start_thread()

    def _grab(self):
        frames = self._pipeline.wait_for_frames(self.timeout_ms)  # raises RuntimeError when the device is lost
        if self._align is not None:
            frames = self._align.process(frames)
        color = np.asanyarray(frames.get_color_frame().get_data()).copy()
        depth = np.asanyarray(frames.get_depth_frame().get_data()).copy() if self.use_depth else None
        return color, depth

    def _close(self) -> None:
        self._stop_thread()
        if self._pipeline is not None:
            self._pipeline.stop()
            self._pipeline = None
