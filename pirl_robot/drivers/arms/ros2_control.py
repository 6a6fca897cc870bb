"""Any ros2_control arm: /joint_states in (joint_state_broadcaster), commands out to a joint trajectory
controller (trajectory_msgs/JointTrajectory) or a forward position controller (std_msgs/Float64MultiArray)."""

from __future__ import annotations

import array
import threading
import time

import numpy as np

from pirl_robot.drivers.arms.base import Arm, ArmError, JointSample
from pirl_robot.drivers.ros_msgs import qos

INTERFACES = ("trajectory", "position")


def trajectory_msg(names, positions, time_from_start_s: float, stamp=None):
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = stamp  # zero stamp = "start now" for the joint trajectory controller
    msg.joint_names = list(names)
    pt = JointTrajectoryPoint()
    pt.positions = [float(x) for x in positions]
    ns = int(time_from_start_s * 1e9)
    pt.time_from_start = Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
    msg.points = [pt]
    return msg


class Ros2ControlArm(Arm):
    def __init__(self, node, command_names: tuple[str, ...], joint_states_topic: str = "/joint_states",
                 command_topic: str = "/joint_trajectory_controller/joint_trajectory",
                 interface: str = "trajectory", time_from_start_s: float = 0.05, state_qos: str = "sensor"):
        super().__init__()
        if interface not in INTERFACES:
            raise ValueError(f"command interface {interface!r} not in {INTERFACES}")
        self.node, self.command_names = node, tuple(command_names)
        self.joint_states_topic, self.command_topic = joint_states_topic, command_topic
        self.interface, self.time_from_start_s, self.state_qos = interface, time_from_start_s, state_qos
        self._sub = self._pub = None
        self.last_msg_time: float | None = None
        self._msg = None  # the command message, built once (names, time_from_start) and refilled by each send
        self._send_lock = threading.Lock()  # one send at a time fills and publishes it

    def connect(self) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self._sub = self.node.create_subscription(JointState, self.joint_states_topic, self._on_joint_state,
                                                  qos(self.state_qos, depth=5))
        if self.interface == "trajectory":
            self._msg = trajectory_msg(self.command_names, [0.0] * len(self.command_names), self.time_from_start_s)
        else:
            self._msg = Float64MultiArray()
        self._pub = self.node.create_publisher(type(self._msg), self.command_topic, qos("reliable", depth=5))
        super().connect()

    def _on_joint_state(self, msg) -> None:
        n = len(msg.name)
        if len(msg.position) != n:
            self.node.get_logger().error(f"{self.joint_states_topic}: {n} names but {len(msg.position)} positions",
                                         throttle_duration_sec=5.0)
            return
        vel = np.asarray(msg.velocity, dtype=np.float64) if len(msg.velocity) == n else None
        self.joint_names = tuple(msg.name)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        self._store(JointSample(tuple(msg.name), np.asarray(msg.position, dtype=np.float64), vel, time.monotonic(),
                                stamp))

    def send(self, targets) -> np.ndarray:
        if not self._connected:
            raise ArmError("ros2_control arm is not connected")
        t = self._check_targets(targets)
        values = array.array("d", t.tobytes())  # float64 as is: the message's own type, no per-entry check
        with self._send_lock:  # publish serializes the message at once: it can be refilled by the next send
            if self.interface == "trajectory":
                self._msg.points[0].positions = values
            else:
                self._msg.data = values
            self._pub.publish(self._msg)
        return t

    def disconnect(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self.node.destroy_publisher(self._pub)
            self._sub = self._pub = None
        super().disconnect()
