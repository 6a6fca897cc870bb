"""Serve an Arm over ROS 2 like a ros2_control arm: sensor_msgs/JointState out on /joint_states, commands in as
trajectory_msgs/JointTrajectory (last point's positions, by joint name) or std_msgs/Float64MultiArray.

    pirl-lerobot-arm --ros-args -p robot_type:=so101_follower -p port:=/dev/ttyACM0 -p robot_id:=follower
"""

from __future__ import annotations

import numpy as np
from rclpy.node import Node

from pirl_robot.drivers.arms.base import Arm, ArmError
from pirl_robot.drivers.ros_msgs import numpy_to_image, qos

BRIDGE_PARAMS = {  # name: (default, description)
    "rate_hz": (20.0, "Joint state publishing (and simulation stepping) rate."),
    "joint_states_topic": ("/joint_states", "sensor_msgs/JointState output."),
    "command_topic": ("/joint_trajectory_controller/joint_trajectory", "Command input topic."),
    "command_interface": ("trajectory", "'trajectory' (JointTrajectory) or 'position' (Float64MultiArray)."),
}


class ArmBridgeNode(Node):
    extra_params: dict = {}

    def __init__(self, node_name: str, arm: Arm | None = None, **kwargs):
        super().__init__(node_name, **kwargs)
        self.p = {}
        for name, (default, description) in {**BRIDGE_PARAMS, **self.extra_params}.items():
            from rcl_interfaces.msg import ParameterDescriptor

            self.p[name] = self.declare_parameter(name, default, ParameterDescriptor(description=description)).value
        if self.p["rate_hz"] <= 0 or self.p["command_interface"] not in ("trajectory", "position"):
            raise ValueError(f"{node_name}: rate_hz must be > 0 and command_interface 'trajectory' or 'position'")
        self.arm = arm if arm is not None else self.make_arm()
        self.arm.connect()
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.state_pub = self.create_publisher(JointState, self.p["joint_states_topic"], qos("sensor", depth=5))
        if self.p["command_interface"] == "trajectory":
            self.create_subscription(JointTrajectory, self.p["command_topic"], self._on_trajectory, qos("reliable", 5))
        else:
            self.create_subscription(Float64MultiArray, self.p["command_topic"], self._on_array, qos("reliable", 5))
        self.image_pubs: dict = {}
        self.commands_received = 0
        self.timer = self.create_timer(1.0 / self.p["rate_hz"], self._on_timer)

    def make_arm(self) -> Arm:
        raise NotImplementedError

    # --- commands in ----------------------------------------------------------------------------------------
    def _on_trajectory(self, msg) -> None:
        if not msg.points:
            return
        self._command(np.asarray(msg.points[-1].positions, dtype=np.float64), tuple(msg.joint_names))

    def _on_array(self, msg) -> None:
        self._command(np.asarray(msg.data, dtype=np.float64), tuple(self.arm.command_names))

    def _command(self, targets: np.ndarray, names: tuple[str, ...]) -> None:
        try:
            if len(names) != len(targets):
                raise ArmError(f"{len(names)} joint names but {len(targets)} positions")
            order = [names.index(n) for n in self.arm.command_names] if set(names) == set(self.arm.command_names) \
                else None
            if order is None:
                self.send_named(targets, names)
            else:
                self.arm.send(targets[order])
            self.commands_received += 1
        except (ArmError, ValueError) as e:
            self.get_logger().error(f"command refused: {e}", throttle_duration_sec=1.0)

    def send_named(self, targets: np.ndarray, names: tuple[str, ...]) -> None:
        raise ArmError(f"command joints {list(names)} != arm joints {list(self.arm.command_names)}")

    # --- state out ------------------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        try:
            self.advance()
        except ArmError as e:
            self.get_logger().error(f"arm read failed: {e}", throttle_duration_sec=1.0)
            return  # publish nothing: consumers see the state go stale
        self.publish_state()

    def advance(self) -> None:
        self.arm.read_state(max_age_ms=float("inf"))

    def publish_state(self, stamp=None) -> None:
        from sensor_msgs.msg import JointState

        s = self.arm.latest()
        if s is None:
            return
        msg = JointState()
        msg.header.stamp = stamp or self.get_clock().now().to_msg()
        msg.name = list(s.names)
        msg.position = [float(x) for x in s.position]
        if s.velocity is not None:
            msg.velocity = [float(x) for x in s.velocity]
        self.state_pub.publish(msg)

    def publish_images(self, images: dict[str, np.ndarray], stamp=None) -> None:
        from sensor_msgs.msg import Image

        stamp = stamp or self.get_clock().now().to_msg()
        for name, img in images.items():
            if name not in self.image_pubs:
                self.image_pubs[name] = self.create_publisher(Image, f"/{name}/image_raw", qos("sensor", 2))
            self.image_pubs[name].publish(numpy_to_image(img, stamp, frame_id=name))

    def destroy_node(self):
        try:
            self.arm.disconnect()
        finally:
            return super().destroy_node()


class LeRobotArmNode(ArmBridgeNode):
    """A lerobot robot (robot_type as lerobot registers it, e.g. so101_follower) served over ROS."""

    extra_params = {"robot_type": ("so101_follower", "lerobot robot type."),
                    "port": ("/dev/ttyACM0", "Serial port of the motor bus."),
                    "robot_id": ("follower", "lerobot robot id (selects its calibration file).")}

    def make_arm(self) -> Arm:
        from lerobot.robots import make_robot_from_config
        from lerobot.robots.config import RobotConfig

        from pirl_robot.drivers.arms.lerobot_bridge import LeRobotArm

        cfg_cls = RobotConfig.get_choice_class(self.p["robot_type"])
        return LeRobotArm(make_robot_from_config(cfg_cls(port=self.p["port"], id=self.p["robot_id"])))

    def advance(self) -> None:
        self.arm.poll()
        if self.arm.images:
            self.publish_images(self.arm.images)


def lerobot_main(argv: list[str] | None = None) -> int:
    from pirl_robot.deploy.runner import spin_nodes

    return spin_nodes([("lerobot_arm_node", LeRobotArmNode)], argv)
