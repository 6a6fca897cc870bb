"""A sensor_msgs/Image topic as a camera (any ROS camera driver: realsense2_camera, usb_cam, the sim arm).

Its intrinsics come from the driver's sensor_msgs/CameraInfo, on the `camera_info` topic beside the image topic
(image_transport's convention: /wrist/image_raw -> /wrist/camera_info). They are read once, when first asked for
(the deploy node's calibration check at configure), waiting up to CAMERA_INFO_WAIT_S on a wait set of the node's
own, so the check works from inside a lifecycle callback without spinning the executor.
"""

from __future__ import annotations

import functools

from pirl_robot.drivers.cameras.base import Camera
from pirl_robot.drivers.ros_msgs import image_to_numpy, qos

CAMERA_INFO_WAIT_S = 2.0
# camera_info models whose coefficients OpenCV's pinhole model reads as they are
OPENCV_MODELS = ("plumb_bob", "rational_polynomial")


class RosImageCamera(Camera):
    def __init__(self, name: str, node, topic: str, qos_kind: str = "sensor", info_topic: str | None = None):
        super().__init__(name)
        self.node, self.topic, self.qos_kind = node, topic, qos_kind
        self.info_topic = info_topic or f"{topic.rsplit('/', 1)[0]}/camera_info"
        self._sub = None
        self.decode_errors = 0

    def _open(self) -> None:
        from sensor_msgs.msg import Image

        self._sub = self.node.create_subscription(Image, self.topic, self._on_image, qos(self.qos_kind))

    def _on_image(self, msg) -> None:
        try:
            img = image_to_numpy(msg)
        except ValueError as e:
            self.decode_errors += 1
            self.node.get_logger().error(f"camera {self.name!r} on {self.topic}: {e}", throttle_duration_sec=5.0)
            return
        self._publish(img, None, source_stamp=msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)

    @functools.cached_property
    def intrinsics(self) -> dict | None:
        """The driver's CameraInfo in the calibration check's form (as RealSenseCamera.intrinsics), read once; None
        where none arrived within CAMERA_INFO_WAIT_S, it is uncalibrated (K all zero) or its model is not OpenCV's."""
        from rclpy.wait_for_message import wait_for_message
        from sensor_msgs.msg import CameraInfo

        log = self.node.get_logger()
        ok, msg = wait_for_message(CameraInfo, self.node, self.info_topic, qos_profile=qos(self.qos_kind),
                                   time_to_wait=CAMERA_INFO_WAIT_S)
        if not ok:
            log.warning(f"camera {self.name!r}: no CameraInfo on {self.info_topic} within {CAMERA_INFO_WAIT_S} s")
            return None
        return camera_info_intrinsics(msg, self.info_topic, log.warning)

    def _close(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self._sub = None


def camera_info_intrinsics(msg, topic: str, warn=print) -> dict | None:
    """sensor_msgs/CameraInfo -> {width, height, fx, fy, ppx, ppy, model, coeffs, source}, or None (with a warning)
    for an uncalibrated camera or a distortion model OpenCV's pinhole functions do not read."""
    k = list(msg.k)
    if not any(k) or msg.width == 0 or msg.height == 0:
        warn(f"CameraInfo on {topic} is uncalibrated (K all zero or no image size)")
        return None
    if msg.distortion_model not in OPENCV_MODELS:
        warn(f"CameraInfo on {topic}: distortion model {msg.distortion_model!r} is not compared "
             f"(supported: {', '.join(OPENCV_MODELS)})")
        return None
    return {"width": int(msg.width), "height": int(msg.height), "fx": k[0], "fy": k[4], "ppx": k[2], "ppy": k[5],
            "model": msg.distortion_model, "coeffs": [float(c) for c in msg.d], "source": f"camera_info {topic}"}
