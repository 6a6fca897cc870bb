"""The recorder on the deploy node: its parameters -> a Recorder on the control loop's taps, the operator's outcome
service, and the simulated arm's episode status as the automatic outcome.

    ros2 service call /deploy_node/episode_outcome std_srvs/srv/SetBool "{data: true}"    # success (false: failure)
    pirl deploy ... (on a terminal): keys y / n                                            # the same from keys

Parameters (pirl_robot/deploy/params.py): record_dir, record_operator, record_outcome, record_video, rerun.
"""

from __future__ import annotations

import json
import time

from pirl_robot.deploy.robot import parse_camera_entry
from pirl_robot.drivers.ros_msgs import level_log
from pirl_robot.record.recorder import Recorder, SessionInfo
from pirl_robot.record.schema import RecordSchema

HEADER_PARAMS = ("bundle", "device", "control_hz", "safety_config", "seed", "exec_horizon", "lead_ticks",
                 "blend_ticks", "max_wait_ms", "tick_source", "command_interface", "max_state_age_ms",
                 "max_image_age_ms")


class RecorderHandle:
    """What the node holds: the recorder and its ROS interfaces; close() detaches and commits."""

    def __init__(self, node, recorder: Recorder, taps: list):
        from std_srvs.srv import SetBool

        self.node, self.recorder, self.taps = node, recorder, taps
        self._subs = []
        self._srv = node.create_service(SetBool, "~/episode_outcome", self._srv_outcome)
        source = node.values["record_outcome"]
        if source.startswith("sim:"):
            from std_msgs.msg import String

            from pirl_robot.drivers.ros_msgs import qos

            self._subs.append(node.create_subscription(String, source[4:], self._on_sim_status,
                                                       qos("reliable", 10)))
        taps.append(recorder.tap)

    def _srv_outcome(self, request, response):
        response.message = self.recorder.set_outcome("success" if request.data else "failure", "operator")
        response.success = not response.message.startswith("no episode")
        return response

    def _on_sim_status(self, msg) -> None:
        try:
            self.recorder.sim_status(json.loads(msg.data))
        except json.JSONDecodeError:
            self.node.get_logger().warning("episode status is not JSON", throttle_duration_sec=5.0)

    def close(self) -> None:
        if self.recorder.tap in self.taps:
            self.taps.remove(self.recorder.tap)
        for s in self._subs:
            self.node.destroy_subscription(s)
        self.node.destroy_service(self._srv)
        self.recorder.close()


def attach_recorder(node, bundle, cmap, arm, safety_name: str, taps: list) -> RecorderHandle | None:
    """Called by the deploy node on configure: a recorder on `taps` when record_dir or rerun is set (node: its
    parameters, logger and the ROS interfaces of the outcome service)."""
    p = node.values
    if not p["record_dir"] and not p["rerun"]:
        return None
    spec = bundle.policy.spec
    schema = RecordSchema(
        state_names=tuple(spec.state_names), action_names=tuple(spec.action_names), command_names=tuple(cmap.names),
        joint_names=tuple(arm.joint_names or cmap.names),
        cameras=tuple((c.name, c.height, c.width) for c in map(parse_camera_entry, p["cameras"])),
        chunk_size=spec.chunk_size, command_scale=tuple(map(float, cmap.scale)),
        command_offset=tuple(map(float, cmap.offset)), action_state_index=tuple(spec.action_state_index),
        fps=float(spec.control_hz), noise_dim=bundle.policy.noise_shape[1])
    info = SessionInfo(
        name=f"{time.strftime('%Y%m%d-%H%M%S')}_{node.get_name()}_{bundle.bundle_id[:12]}", schema=schema,
        task=spec.instruction, robot=spec.robot, operator=p["record_operator"],
        bundle={"id": bundle.bundle_id, "content_sha256": bundle.content_sha256, "path": str(bundle.path)},
        spec=spec.to_dict(), params={**{k: p[k] for k in HEADER_PARAMS}, "safety": safety_name},
        noise_seed_base=p["seed"], outcome_source="sim" if p["record_outcome"].startswith("sim:") else "operator")
    log = level_log(node.get_logger())
    recorder = Recorder(p["record_dir"] or None, info, video=p["record_video"], live=p["rerun"],
                        log=lambda level, msg: log(level, f"[record] {msg}"))
    if recorder.session is not None:
        log("info", f"recording episodes to {recorder.session}")
    return RecorderHandle(node, recorder, taps)
