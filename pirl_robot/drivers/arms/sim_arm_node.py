"""A simulated Panda served over ROS 2 exactly like hardware, backed by ManiSkill (PushCube-v1 / PickCube-v1).

Publishes /joint_states (positions + velocities), camera images on /<camera>/image_raw, the non-joint entries
of the task's state vector (object and goal poses: what an object tracker would give) as named values on
/task_state, and the episode status (JSON in std_msgs/String) on ~/episode. Accepts the same JointTrajectory /
Float64MultiArray commands as a ros2_control Panda (arm joints in rad, panda_finger_joint1 in m). ~/reset
(std_srvs/Trigger) starts a new episode with the next seed; the episode clock starts with the first command.

    pirl-sim-arm --ros-args -p task:=PushCube-v1 -p obs_mode:=state -p seed:=1000
    pirl-sim-arm --ros-args -p step_on:=command         # lockstep: one simulator step per command

Two clocks (`step_on`):
- `clock` (default): like hardware, the simulator steps every 1/rate_hz from the first command on, commanded or
  not, and the state goes out after each step.
- `command` (lockstep, for tests and CI): every command received steps the simulator once and its state goes out
  at once, so a consumer that ticks on joint states runs step for step with the simulator, however slow the
  machine: a late tick delays the episode but never changes it. While no command comes for
  `lockstep_keepalive_s`, the state is published again unchanged (the consumer's inputs stay fresh).
"""

from __future__ import annotations

import json
import time

from pirl_robot.drivers.arms.arm_node import ArmBridgeNode
from pirl_robot.drivers.arms.base import Arm
from pirl_robot.drivers.ros_msgs import qos


class SimArmNode(ArmBridgeNode):
    extra_params = {
        "task": ("PushCube-v1", "ManiSkill task (PushCube-v1, PickCube-v1)."),
        "obs_mode": ("state", "'state' (object poses on task_state) or 'rgb' (cameras published)."),
        "image_size": (64, "Camera image width = height (rgb)."),
        "max_episode_steps": (50, "Steps per episode; then the arm holds and the episode is done."),
        "seed": (1000, "Seed of the first episode; each reset uses the next one."),
        "task_state_topic": ("/task_state", "Named non-joint state entries (sensor_msgs/JointState)."),
        "start_on_first_command": (True, "Hold the simulation after a reset until the first command arrives."),
        "step_on": ("clock", "'clock': step every 1/rate_hz (like hardware); 'command': one step per command "
                             "(lockstep)."),
        "lockstep_keepalive_s": (0.2, "Lockstep: publish the unchanged state again after this long without a "
                                      "command."),
    }

    def make_arm(self) -> Arm:
        from sim.maniskill.config import TaskConfig

        from pirl_robot.drivers.arms.maniskill_arm import ManiSkillArm

        cfg = TaskConfig(task=self.p["task"], obs_mode=self.p["obs_mode"], image_size=self.p["image_size"],
                         max_episode_steps=self.p["max_episode_steps"])
        return ManiSkillArm(cfg)

    def __init__(self, node_name: str = "sim_arm_node", **kwargs):
        super().__init__(node_name, **kwargs)
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        self.task_pub = self.create_publisher(JointState, self.p["task_state_topic"], qos("sensor", 5))
        self.episode_pub = self.create_publisher(String, "~/episode", qos("reliable", 10))
        self.create_service(Trigger, "~/reset", self._srv_reset)
        if self.p["step_on"] not in ("clock", "command"):
            raise ValueError(f"{node_name}: step_on must be 'clock' or 'command', got {self.p['step_on']!r}")
        self.lockstep = self.p["step_on"] == "command"
        self.last_publish = 0.0
        self.episode, self.seed = 0, self.p["seed"]
        self._reset(self.seed)

    def _reset(self, seed: int) -> None:
        self.arm.reset(seed)
        self.seed, self.commands_at_reset = seed, self.commands_received
        self.status = "ready"

    def _srv_reset(self, request, response):
        self.episode += 1
        self._reset(self.p["seed"] + self.episode)
        if self.lockstep:
            self.publish_state()  # the new episode's state at once (no clock publishes it)
        response.success, response.message = True, json.dumps(self.episode_status())
        return response

    def send_named(self, targets, names) -> None:
        self.arm.send(targets, names)  # the sim also takes a normalised "gripper" entry

    def _command(self, targets, names) -> None:
        received = self.commands_received
        super()._command(targets, names)
        if self.lockstep and self.commands_received > received and self.status != "done":
            self._step_episode()  # lockstep: this command's step, and its state out at once
            self.publish_state()

    def episode_status(self) -> dict:
        return {"episode": self.episode, "seed": self.seed, "step": self.arm.steps, "status": self.status,
                "success": bool(self.arm.info.get("success", False)), "success_once": self.arm.success_once,
                "max_steps": self.p["max_episode_steps"], "task": self.p["task"],
                "commands": self.commands_received - self.commands_at_reset}

    def _on_timer(self) -> None:
        if not self.lockstep:
            return super()._on_timer()
        if time.monotonic() - self.last_publish >= self.p["lockstep_keepalive_s"]:
            self.publish_state()  # no command for a while: the same state again, freshly stamped

    def advance(self) -> None:
        waiting = self.p["start_on_first_command"] and self.commands_received == self.commands_at_reset
        if not waiting:
            self._step_episode()

    def _step_episode(self) -> None:
        if self.status != "done":
            self.arm.step()
            self.status = "running"
            if self.arm.steps >= self.p["max_episode_steps"]:
                self.status = "done"

    def publish_state(self, stamp=None) -> None:
        """Task state and images first, joint states last, one stamp: a consumer that ticks on joint states
        finds the other inputs of the same instant already there (and can match them by stamp)."""
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String

        stamp = stamp or self.get_clock().now().to_msg()
        named = {k: v for k, v in self.arm.named_state().items() if not k.startswith(("qpos.", "qvel."))}
        msg = JointState(name=list(named), position=[float(v) for v in named.values()])
        msg.header.stamp = stamp
        self.task_pub.publish(msg)
        self.publish_images(self.arm.images(), stamp)
        super().publish_state(stamp)
        self.episode_pub.publish(String(data=json.dumps(self.episode_status())))
        self.last_publish = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    from pirl_robot.deploy.runner import spin_nodes

    return spin_nodes([("sim_arm_node", SimArmNode)], argv)
