"""Cameras behind one interface: connect(), read(), read_latest(max_age_ms), disconnect().

    cam = make_camera("wrist", "opencv:/dev/video0", width=640, height=480, fps=30)
    cam.connect()
    frame = cam.read_latest(max_age_ms=100)   # raises StaleFrameError if the newest frame is older
"""

from pirl_robot.drivers.cameras.base import Camera, CameraError, Frame, StaleFrameError
from pirl_robot.drivers.cameras.factory import make_camera, parse_camera_source

__all__ = ["Camera", "CameraError", "Frame", "StaleFrameError", "make_camera", "parse_camera_source"]
