"""Camera source strings, one per camera, as used in the deploy parameters:

    "topic:/wrist/image_raw"       a ROS image topic (needs the node that subscribes)
    "opencv:/dev/video0" | "opencv:0" | "opencv:/path/clip.mp4"
    "realsense:123456789012" | "realsense:"   (empty serial: the only connected device)
"""

from __future__ import annotations

from pirl_robot.drivers.cameras.base import Camera

KINDS = ("topic", "opencv", "realsense")


def parse_camera_source(source: str) -> tuple[str, str]:
    kind, sep, arg = source.partition(":")
    if not sep or kind not in KINDS:
        raise ValueError(f"camera source {source!r} must look like '<kind>:<arg>' with kind in {KINDS}")
    if kind in ("topic", "opencv") and not arg:
        raise ValueError(f"camera source {source!r} needs a {'topic' if kind == 'topic' else 'device'} after ':'")
    return kind, arg


def make_camera(name: str, source: str, *, node=None, width: int | None = None, height: int | None = None,
                fps: float | None = None) -> Camera:
    kind, arg = parse_camera_source(source)
    if kind == "topic":
        from pirl_robot.drivers.cameras.ros_topic import RosImageCamera

        if node is None:
            raise ValueError(f"camera {name!r} reads a ROS topic and needs a node")
        return RosImageCamera(name, node, arg)
    if kind == "opencv":
        from pirl_robot.drivers.cameras.opencv import OpenCVCamera

        return OpenCVCamera(name, arg, width, height, fps)
    from pirl_robot.drivers.cameras.realsense import RealSenseCamera

    return RealSenseCamera(name, arg, width or 640, height or 480, int(fps or 30))
