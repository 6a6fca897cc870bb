"""A sensor_msgs/Image topic as a camera (any ROS camera driver: realsense2_camera, usb_cam, the sim arm)."""

from __future__ import annotations

from pirl_robot.drivers.cameras.base import Camera
from pirl_robot.drivers.ros_msgs import image_to_numpy, qos


class RosImageCamera(Camera):
    def __init__(self, name: str, node, topic: str, qos_kind: str = "sensor"):
        super().__init__(name)
        self.node, self.topic, self.qos_kind = node, topic, qos_kind
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

    def _close(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self._sub = None
