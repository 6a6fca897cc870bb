"""The deploy node's inputs: the arm's joint states, the cameras and the named task state, turned into one policy
observation per tick, or an error saying which input is stale."""

from __future__ import annotations

import time
from typing import Any, Callable

from pirl_robot.deploy.robot import CommandMap, StaleInputError, StateAssembler, fit_image, parse_camera_entry
from pirl_robot.drivers.arms.base import JointSample


class Inputs:
    def __init__(self, node, params: dict, command_map: CommandMap, assembler: StateAssembler, instruction: str):
        from pirl_robot.drivers.arms.ros2_control import Ros2ControlArm

        self.node, self.p, self.assembler, self.instruction = node, params, assembler, instruction
        self.command_map = command_map
        if assembler.needs_task_state and not params["task_state_topic"]:
            raise ValueError(f"state entries {[n for _, n in assembler.from_task][:4]}... are not joint states: "
                             f"set task_state_topic")
        tfs = params["trajectory_time_from_start"] or 1.0 / params["control_hz"]
        self.arm = Ros2ControlArm(node, command_map.names, params["joint_states_topic"], params["command_topic"],
                                  params["command_interface"], tfs)
        self.cameras: dict = {}  # name -> (camera, CameraEntry)
        self._task_state: tuple[float, dict[str, float], float] | None = None  # (received, values, header stamp)
        self._task_sub = None

    def connect(self, on_joint_state: Callable[[JointSample], None]) -> None:
        """Subscribe to the arm's joint states (on_joint_state per message), the cameras and the task state."""
        from pirl_robot.drivers.cameras.factory import make_camera

        p = self.p
        self.arm.add_state_listener(on_joint_state)
        self.arm.connect()
        for entry in map(parse_camera_entry, p["cameras"]):
            cam = make_camera(entry.name, entry.source, node=self.node, width=entry.width, height=entry.height)
            cam.connect()
            self.cameras[entry.name] = (cam, entry)
        if self.assembler.needs_task_state:
            from sensor_msgs.msg import JointState

            from pirl_robot.drivers.ros_msgs import qos

            self._task_sub = self.node.create_subscription(JointState, p["task_state_topic"], self._on_task_state,
                                                           qos("sensor", depth=5))

    def release(self) -> None:
        for cam, _ in self.cameras.values():
            cam.disconnect()
        self.cameras = {}
        self.arm.disconnect()
        if self._task_sub is not None:
            self.node.destroy_subscription(self._task_sub)
            self._task_sub = None

    def _on_task_state(self, msg) -> None:
        if len(msg.name) == len(msg.position):
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self._task_state = (time.monotonic(), dict(zip(msg.name, msg.position)), stamp)

    def _await_same_instant(self, joints: JointSample) -> None:
        """Ticking on joint states: give the task state and camera frames of the same stamp a moment to arrive
        (they travel on other topics), so one observation never mixes two instants."""
        if self.p["tick_source"] != "joint_states" or not joints.source_stamp:
            return

        def behind() -> bool:
            if self.assembler.needs_task_state and (self._task_state is None
                                                     or self._task_state[2] < joints.source_stamp):
                return True
            for cam, _ in self.cameras.values():
                f = cam.latest()
                if f is None or f.meta.get("source_stamp", joints.source_stamp) < joints.source_stamp:
                    return True
            return False

        deadline = time.monotonic() + self.p["max_wait_ms"] / 1e3
        while behind() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def observe(self) -> tuple[dict, JointSample, dict]:
        """(observation, joint sample, camera frames) from the freshest inputs; raises if any is stale/missing."""
        p = self.p
        joints = self.arm.read_state(p["max_state_age_ms"])
        self._await_same_instant(joints)
        task = None
        if self.assembler.needs_task_state:
            if self._task_state is None:
                raise StaleInputError("no task state received yet")
            received, task, _ = self._task_state
            if (time.monotonic() - received) * 1e3 > p["max_state_age_ms"]:
                raise StaleInputError(f"task state is {(time.monotonic() - received) * 1e3:.0f} ms old")
        obs: dict[str, Any] = {"state": self.assembler.build(joints, task), "images": {},
                               "instruction": self.instruction}
        frames = {}
        for name, (cam, entry) in self.cameras.items():
            frames[name] = frame = cam.read_latest(p["max_image_age_ms"])
            obs["images"][name] = fit_image(frame.color, entry.height, entry.width)
        return obs, joints, frames
