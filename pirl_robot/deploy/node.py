"""The deploy node: a ROS 2 lifecycle node that runs a policy bundle on an arm.

    pirl deploy --config panda_maniskill.yaml --bundle bundles/pushcube      # or: ros2 launch pirl_robot ...
    ros2 lifecycle set /deploy_node configure && ros2 lifecycle set /deploy_node activate
    ros2 service call /deploy_node/start std_srvs/srv/Trigger                  # execute the policy
    ros2 service call /deploy_node/stop std_srvs/srv/Trigger                   # stop executing (arm holds)

Lifecycle: configure loads and checks the bundle against the robot parameters and connects the drivers;
activate starts the control loop (holding, or executing at once with autostart); deactivate stops it; cleanup
releases everything. Inputs: sensor_msgs/JointState (+ optional named task state), cameras (ROS image topics or
in-process drivers). Output: trajectory_msgs/JointTrajectory or std_msgs/Float64MultiArray. Every command passes
deploy/safety_hook.py. Control ticks come from a timer thread or from each joint state message (tick_source).

This module is the ROS side only (parameters, lifecycle, services, topics, diagnostics). What configure builds
lives in one `Deployment`; the tick itself (observe -> broker -> safety -> command, and its threads) is
deploy/control_loop.py, which runs without ROS.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from pirl_robot.deploy import params as P
from pirl_robot.deploy.broker import ActionChunkBroker
from pirl_robot.deploy.control_loop import ControlLoop
from pirl_robot.deploy.inputs import Inputs
from pirl_robot.deploy.robot import CommandMap, StateAssembler, robot_spec
from pirl_robot.deploy.safety_hook import make_safety_stage
from pirl_robot.deploy.taps import Tap
from pirl_robot.drivers.arms.base import ArmError
from pirl_robot.drivers.cameras.base import CameraError
from pirl_robot.serve.client import RemoteBundle, open_policy_source


@dataclass
class Deployment:
    """What on_configure builds, released together (in reverse order of creation) by `release`."""

    bundle: Any  # pirl_robot.bundle.Bundle, or serve.client.RemoteBundle (policy served by pirl serve)
    command_map: CommandMap
    safety: Any  # safety_hook.SupervisedSafety | UnfilteredPassThrough
    inputs: Inputs
    loop: ControlLoop
    teardown: contextlib.ExitStack  # recorder, ROS interfaces, inference thread, drivers

    def release(self) -> None:
        self.loop.stop()
        self.teardown.close()


class DeployNode(LifecycleNode):
    def __init__(self, node_name: str = "deploy_node", **kwargs):
        super().__init__(node_name, **kwargs)
        self.values: dict[str, Any] = {}  # shared with the control loop and the inputs: updated in place
        from rclpy.callback_groups import ReentrantCallbackGroup
        from std_srvs.srv import Trigger

        # Reentrant: ~/stop waits for the controlled stop while joint-state callbacks keep the loop ticking.
        group = ReentrantCallbackGroup()
        for name, cb in (("start", self._srv_start), ("stop", self._srv_stop), ("estop", self._srv_estop),
                         ("reset_estop", self._srv_reset_estop), ("reset_stats", self._srv_reset_stats)):
            self.create_service(Trigger, f"~/{name}", cb, callback_group=group)
        self.deployment: Deployment | None = None  # set by on_configure, None once released
        self._released_diagnostics: dict[str, Any] = {"executing": False, "safety": "n/a", "safety_mode": ""}
        self.taps: list[Tap] = []  # recorder / viewer hooks (deploy/taps.py), handed to the control loop
        self.blocking_callbacks_allowed = True  # the runner clears it when it spins us on a one-thread executor
        self._declare_parameters()  # last: raises on a bad value, and close() must work on what exists
        self.add_on_set_parameters_callback(self._on_set_parameters)

    @property
    def bundle(self):
        return None if self.deployment is None else self.deployment.bundle

    @property
    def arm(self):
        return None if self.deployment is None else self.deployment.loop.arm

    @property
    def safety_mode(self) -> str:
        return "" if self.deployment is None else self.deployment.loop.mode

    # --- parameters -----------------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.parameter import Parameter

        array_type = {"str[]": Parameter.Type.STRING_ARRAY, "int[]": Parameter.Type.INTEGER_ARRAY,
                      "float[]": Parameter.Type.DOUBLE_ARRAY}
        for p in P.PARAMS:
            desc = ParameterDescriptor(description=p.description, read_only=False,
                                       additional_constraints="" if p.dynamic else "fixed while configured")
            default = array_type[p.type] if p.type.endswith("[]") and not p.default else p.default
            value = self.declare_parameter(p.name, default, desc).value
            self.values[p.name] = ([] if value is None else list(value)) if p.type.endswith("[]") else value
        errors = P.validate(self.values)
        if errors:
            raise ValueError("invalid deploy parameters:\n  " + "\n  ".join(errors))

    def _on_set_parameters(self, params):
        from rcl_interfaces.msg import SetParametersResult

        new = dict(self.values)
        configured = self.deployment is not None
        for prm in params:
            if prm.name not in P.BY_NAME:
                return SetParametersResult(successful=False, reason=f"unknown parameter {prm.name!r}")
            value = prm.value
            new[prm.name] = ([] if value is None else list(value)) if P.BY_NAME[prm.name].type.endswith("[]") \
                else value
            if configured and not P.BY_NAME[prm.name].dynamic and new[prm.name] != self.values[prm.name]:
                return SetParametersResult(successful=False,
                                           reason=f"{prm.name} is fixed while configured (clean up first)")
        errors = P.validate(new)
        if errors:
            return SetParametersResult(successful=False, reason="; ".join(errors))
        self.values.update(new)
        if configured:
            broker = self.deployment.loop.broker
            broker.blend_ticks, broker.lead_ticks = new["blend_ticks"], new["lead_ticks"]
        return SetParametersResult(successful=True)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from pirl_robot.bundle import BundleError
        from pirl_robot.deploy.realtime import prepare_process

        for warning in prepare_process(self.values["torch_threads"], self.values["lock_memory"]):
            self.get_logger().warning(warning)
        try:
            self.deployment = d = self._build()
        except (BundleError, ValueError, ArmError, CameraError) as e:
            self.get_logger().error(f"configure failed: {e}")
            return TransitionCallbackReturn.FAILURE
        if not d.safety.enforcing:
            self.get_logger().warning(f"safety filter: {d.safety.name}")
        spec = d.bundle.policy.spec
        self.get_logger().info(f"configured: bundle {d.bundle.bundle_id} ({spec.robot}, {spec.action_dim} actions, "
                               f"chunk {spec.chunk_size}/{d.loop.broker.exec_horizon} at {spec.control_hz} Hz)")
        return TransitionCallbackReturn.SUCCESS

    def _check_calibration(self, p: dict, bundle, inputs: Inputs) -> None:
        """Warn or refuse (CalibrationMismatch, a ValueError) where a live camera differs from the calibration the
        policy was trained with (deploy/calibration_check.py)."""
        from pirl_robot.deploy.calibration_check import check_cameras, parse_calibration_entries

        if isinstance(bundle, RemoteBundle):
            self.get_logger().info("remote policy: the served bundle's camera calibration is not checked here")
            return
        cams = {name: cam for name, (cam, _) in inputs.cameras.items()}
        for ok, line in check_cameras(bundle.camera_calibrations(), parse_calibration_entries(
                p["camera_calibrations"]), cams, p["calibration_check"]):
            (self.get_logger().info if ok else self.get_logger().warning)(line)

    def _build(self) -> Deployment:
        """Bundle, command map, safety stage, drivers, control loop, recorder and ROS interfaces; on an error
        everything made so far is released again."""
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Bool, String

        from pirl_robot.drivers.ros_msgs import level_log, qos
        from pirl_robot.record.ros import attach_recorder  # recording + Rerun on the taps (record/ros.py)

        p = self.values
        if not p["bundle"]:
            raise ValueError("parameter 'bundle' is empty: give the path of an exported bundle")
        robot = robot_spec(p)
        bundle = open_policy_source(p["bundle"], robot, p["device"], p["remote_token_env"], p["remote_timeout_ms"],
                                    p["remote_tls_ca"])  # a bundle directory, or remote://HOST:PORT (pirl serve)
        spec = bundle.policy.spec
        if p["chunking"] == "rtc" and not isinstance(bundle, RemoteBundle):
            from pirl_robot.flow.rtc import load_lerobot_rtc

            load_lerobot_rtc()  # seconds of imports: here, not in the first chunk's time
        command_map = CommandMap.from_params(p)
        safety = make_safety_stage(p["safety_config"], spec, command_map)
        with contextlib.ExitStack() as stack:
            if isinstance(bundle, RemoteBundle):
                stack.callback(bundle.policy.close)
            inputs = Inputs(self, p, command_map, StateAssembler(robot.state_names), spec.instruction)
            stack.callback(inputs.release)
            broker = ActionChunkBroker(p["exec_horizon"] or spec.exec_horizon, p["blend_ticks"], p["lead_ticks"])
            loop = ControlLoop(inputs, inputs.arm, safety, broker, bundle.policy, p, level_log(self.get_logger()),
                               taps=self.taps)
            stack.callback(loop.close)
            if isinstance(bundle, RemoteBundle):  # a lost policy server is a policy fault at the next tick
                bundle.policy.on_lost = loop.policy_lost
            inputs.connect(loop.wake)
            self._check_calibration(p, bundle, inputs)  # the bundle's camera calibration vs the live cameras
            safety.driver(True)
            events_pub = self.create_publisher(String, "~/safety_events", qos("reliable", 50))
            stack.callback(self.destroy_publisher, events_pub)
            to_json = json.JSONEncoder(default=float).encode  # json.dumps(e, default=float), encoder built once
            loop.publish_events = lambda events: [events_pub.publish(String(data=to_json(e))) for e in events]
            diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            stack.callback(self.destroy_publisher, diag_pub)
            estop_sub = self.create_subscription(Bool, p["estop_topic"], self._on_estop_msg, qos("reliable", 10))
            stack.callback(self.destroy_subscription, estop_sub)
            diag_timer = self.create_timer(p["diagnostics_period_s"], lambda: self._publish_diagnostics(diag_pub))
            stack.callback(self.destroy_timer, diag_timer)
            recorder = attach_recorder(self, bundle, command_map, inputs.arm, safety.name, self.taps)
            if recorder is not None:
                stack.callback(recorder.close)  # first on release: commits the open episode
            return Deployment(bundle, command_map, safety, inputs, loop, stack.pop_all())

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deployment.loop.start()
        if self.values["autostart"]:
            self.start_policy()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_policy()
        self.deployment.loop.stop()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop and release everything without a lifecycle transition (process exit, lost context)."""
        d, self.deployment = self.deployment, None
        if d is not None:
            d.loop.stop_policy()
            d.release()
            self._released_diagnostics = {**d.loop.diagnostics(), "safety": "n/a"}  # the last run's figures

    def destroy_node(self):
        self.close()
        return super().destroy_node()

    # --- start / stop ---------------------------------------------------------------------------------------
    def start_policy(self) -> str:
        if self.deployment is None:
            raise RuntimeError("the node is not active (configure and activate it first)")
        return self.deployment.loop.start_policy()

    def stop_policy(self, wait_s: float = 0.0) -> str:
        """Stop executing; the filter brakes within limits on the next ticks. wait_s: return once at rest."""
        if self.deployment is None:
            return "was not executing (safety mode n/a)"
        return self.deployment.loop.stop_policy(wait_s)

    def estop(self, detail: str = "") -> str:
        """Latch the e-stop: stop executing and send the hold at once (not waiting for the next tick)."""
        if self.deployment is None:
            return "not configured"
        return self.deployment.loop.estop(detail)

    def _on_estop_msg(self, msg) -> None:
        if msg.data:
            self.estop(f"({self.values['estop_topic']})")

    def _srv_estop(self, request, response):
        response.message, response.success = self.estop("(service)"), True
        return response

    def _srv_reset_estop(self, request, response):
        response.success = self.deployment is not None and self.deployment.safety.reset_estop()
        response.message = "e-stop reset" if response.success else "e-stop was not latched"
        return response

    def _srv_start(self, request, response):
        try:
            response.message, response.success = self.start_policy(), True
        except RuntimeError as e:
            response.message, response.success = str(e), False
        return response

    def _srv_stop(self, request, response):
        # Under a single-threaded executor waiting here would starve the joint-state callbacks the stop needs.
        wait_s = 3.0 if self.blocking_callbacks_allowed else 0.0
        response.message, response.success = self.stop_policy(wait_s=wait_s), True
        return response

    def _srv_reset_stats(self, request, response):
        """Start the timing statistics afresh (e.g. after warm-up, so start-up ticks do not set the tails)."""
        if self.deployment is not None:
            self.deployment.loop.reset_stats()
        response.message, response.success = "timing statistics reset", True
        return response

    # --- diagnostics ----------------------------------------------------------------------------------------
    def diagnostics(self) -> dict[str, Any]:
        d = self.deployment
        if d is None:
            return dict(self._released_diagnostics)
        return {**d.loop.diagnostics(), "bundle": d.bundle.bundle_id}

    def _publish_diagnostics(self, pub) -> None:
        from pirl_robot.deploy.diagnostics import diagnostic_array, status_name

        d = self.deployment
        if d is None:
            return
        pub.publish(diagnostic_array(status_name(self.get_name()), self.diagnostics(), d.safety.enforcing,
                                     d.loop.executing, self.get_clock().now().to_msg()))


def main(argv: list[str] | None = None) -> int:
    from pirl_robot.deploy.runner import spin_nodes

    return spin_nodes([("deploy_node", DeployNode)], argv)
