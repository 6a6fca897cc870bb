"""A stand-in for third-party drivers in its own process: publishes plain sensor_msgs/JointState and
sensor_msgs/Image (what joint_state_broadcaster and any ROS camera driver publish) until killed.

    python tests/ros_publisher.py '{"joints": {...}, "image_topic": "/wrist/image_raw", "image": [H, W, seed]}'
    python tests/ros_publisher.py '{"image_topic": "/wrist/image_raw", "image": [H, W, seed], "rate_hz": 30}'
"""

import json
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState

from pirl_robot.process import die_with_parent_term


def pattern_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def main():
    die_with_parent_term()  # never outlive the test process
    cfg = json.loads(sys.argv[1])
    rclpy.init()
    node = Node("third_party_driver")
    joints = cfg.get("joints") or {}  # none: a camera driver only
    js = node.create_publisher(JointState, cfg.get("joint_states_topic", "/joint_states"), 10) if joints else None
    img_pub = node.create_publisher(Image, cfg["image_topic"], 10) if cfg.get("image_topic") else None
    names, pos = list(joints), [float(v) for v in joints.values()]
    if img_pub:
        h, w, seed = cfg["image"]
        img = pattern_image(h, w, seed)
    period = 1.0 / cfg.get("rate_hz", 50.0)
    while rclpy.ok():
        stamp = node.get_clock().now().to_msg()
        if img_pub:
            m = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=img.tobytes())
            m.header.stamp = stamp
            img_pub.publish(m)
        if js:
            m = JointState(name=names, position=pos, velocity=[0.0] * len(pos))
            m.header.stamp = stamp
            js.publish(m)
        time.sleep(period)


if __name__ == "__main__":
    main()
