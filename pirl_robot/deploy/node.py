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
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from pirl_robot.deploy import params as P
from pirl_robot.deploy.broker import ActionChunkBroker
from pirl_robot.deploy.inference import ChunkResult, InferenceWorker
from pirl_robot.deploy.inputs import Inputs
from pirl_robot.deploy.robot import CommandMap, StaleInputError, StateAssembler, robot_spec
from pirl_robot.deploy.safety_hook import make_safety_stage
from pirl_robot.deploy.stats import Rolling
from pirl_robot.drivers.arms.base import ArmError, JointSample
from pirl_robot.drivers.cameras.base import CameraError

INPUT_ERRORS = (StaleInputError, ArmError, CameraError)
MOVING_MODES = ("starting", "running", "hold", "stopping")  # safety filter modes that still stream commands


class DeployNode(LifecycleNode):
    def __init__(self, node_name: str = "deploy_node", **kwargs):
        super().__init__(node_name, **kwargs)
        self.values: dict[str, Any] = {}
        from rclpy.callback_groups import ReentrantCallbackGroup
        from std_srvs.srv import Trigger

        # Reentrant: ~/stop waits for the controlled stop while joint-state callbacks keep the loop ticking.
        group = ReentrantCallbackGroup()
        for name, cb in (("start", self._srv_start), ("stop", self._srv_stop), ("estop", self._srv_estop),
                         ("reset_estop", self._srv_reset_estop), ("reset_stats", self._srv_reset_stats)):
            self.create_service(Trigger, f"~/{name}", cb, callback_group=group)
        self.bundle = None
        self.arm = None
        self.inputs: Inputs | None = None
        self._configured = False
        self._active = False
        self._executing = False
        self._loop_thread: threading.Thread | None = None
        self._tick_event = threading.Event()
        self._chunk_cond = threading.Condition()
        self.tick = 0
        self.episode = 0
        self.taps: list[Callable[[str, dict], None]] = []  # recorder / viewer hooks: fn(kind, record)
        self.safety_mode = ""
        self._deferred_request: tuple[dict, int] | None = None  # chunk request held until the tick's command is out
        self.blocking_callbacks_allowed = True  # the runner clears it when it spins us on a one-thread executor
        self._reset_stats()
        self._declare_parameters()  # last: raises on a bad value, and close() must work on what exists
        self.add_on_set_parameters_callback(self._on_set_parameters)

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
        for prm in params:
            if prm.name not in P.BY_NAME:
                return SetParametersResult(successful=False, reason=f"unknown parameter {prm.name!r}")
            value = prm.value
            new[prm.name] = ([] if value is None else list(value)) if P.BY_NAME[prm.name].type.endswith("[]") \
                else value
            if self._configured and not P.BY_NAME[prm.name].dynamic and new[prm.name] != self.values[prm.name]:
                return SetParametersResult(successful=False,
                                           reason=f"{prm.name} is fixed while configured (clean up first)")
        errors = P.validate(new)
        if errors:
            return SetParametersResult(successful=False, reason="; ".join(errors))
        self.values = new
        if self._configured:
            self.broker.blend_ticks, self.broker.lead_ticks = new["blend_ticks"], new["lead_ticks"]
        return SetParametersResult(successful=True)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from pirl_robot.bundle import BundleError, open_bundle
        from pirl_robot.deploy.realtime import prepare_process

        p = self.values
        for warning in prepare_process(p["torch_threads"], p["lock_memory"]):
            self.get_logger().warning(warning)
        try:
            if not p["bundle"]:
                raise ValueError("parameter 'bundle' is empty: give the path of an exported bundle")
            robot = robot_spec(p)
            self.bundle = open_bundle(p["bundle"], robot_spec=robot, device=p["device"])
            self.command_map = CommandMap.from_params(p)
            self.safety = make_safety_stage(p["safety_config"], self.bundle.policy.spec, self.command_map)
            self.inputs = Inputs(self, p, self.command_map, StateAssembler(robot.state_names),
                                 self.bundle.policy.spec.instruction)
            self.inputs.connect(self._on_joint_state)
            self.arm = self.inputs.arm
            self._check_calibration(p)  # issue 15: bundle's camera calibration vs the live one
            self.safety.driver(True)
            from pirl_robot.record.ros import attach_recorder  # recording + Rerun on node.taps (record/ros.py)

            self.recorder = attach_recorder(self)
        except (BundleError, ValueError, ArmError, CameraError) as e:
            self.get_logger().error(f"configure failed: {e}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        spec = self.bundle.policy.spec
        self.broker = ActionChunkBroker(p["exec_horizon"] or spec.exec_horizon, p["blend_ticks"], p["lead_ticks"])
        self.worker = InferenceWorker(self.bundle.policy, self._on_chunk, p["seed"])
        if not self.safety.enforcing:
            self.get_logger().warning(f"safety filter: {self.safety.name}")
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Bool, String

        from pirl_robot.drivers.ros_msgs import qos

        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._events_pub = self.create_publisher(String, "~/safety_events", qos("reliable", 50))
        self._estop_sub = self.create_subscription(Bool, p["estop_topic"], self._on_estop_msg, qos("reliable", 10))
        self._diag_timer = self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)
        self._configured = True
        self.get_logger().info(f"configured: bundle {self.bundle.bundle_id} ({spec.robot}, {spec.action_dim} "
                               f"actions, chunk {spec.chunk_size}/{self.broker.exec_horizon} at {spec.control_hz} Hz)")
        return TransitionCallbackReturn.SUCCESS

    def _check_calibration(self, p: dict) -> None:
        from pirl_robot.deploy.calibration_check import check_cameras, parse_calibration_entries

        cams = {name: cam for name, (cam, _) in self.inputs.cameras.items()}
        for ok, line in check_cameras(self.bundle.camera_calibrations(), parse_calibration_entries(
                p["camera_calibrations"]), cams, p["calibration_check"]):  # CalibrationMismatch: a ValueError
            (self.get_logger().info if ok else self.get_logger().warning)(line)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._loop_thread = threading.Thread(target=self._control_loop, name="control-loop", daemon=True)
        self._loop_thread.start()
        if self.values["autostart"]:
            self.start_policy()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_policy()
        self._stop_loop()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_policy()
        self._stop_loop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_policy()
        self._stop_loop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop and release everything without a lifecycle transition (process exit, lost context)."""
        self.stop_policy()
        self._stop_loop()
        self._release()

    def destroy_node(self):
        self.close()
        return super().destroy_node()

    def _release(self) -> None:
        self._configured = False
        if getattr(self, "recorder", None) is not None:
            self.recorder.close()  # commits the open episode
            self.recorder = None
        if getattr(self, "worker", None) is not None:
            self.worker.close()
            self.worker = None
        if self.inputs is not None:
            self.inputs.release()
            self.inputs = None
        self.arm = None
        if getattr(self, "_diag_timer", None) is not None:
            self.destroy_timer(self._diag_timer)
            self.destroy_publisher(self._diag_pub)
            self.destroy_publisher(self._events_pub)
            self.destroy_subscription(self._estop_sub)
            self._diag_timer = None
        self.bundle = None

    # --- start / stop ---------------------------------------------------------------------------------------
    def start_policy(self) -> str:
        if not self._active:
            raise RuntimeError("the node is not active (configure and activate it first)")
        ok, why = self.safety.start()
        if not ok:
            raise RuntimeError(why)
        with self._chunk_cond:
            self.broker.reset()
            self.episode += 1
            if self.values["seed"] >= 0:
                self.worker.reseed(self.values["seed"] + self.episode)
            self._policy_error = None
            self._executing = True
        return f"executing episode {self.episode}"

    def stop_policy(self, wait_s: float = 0.0) -> str:
        """Stop executing; the filter brakes within limits on the next ticks. wait_s: return once at rest."""
        with self._chunk_cond:
            was = self._executing
            self._executing = False
            if self._configured:
                self.broker.reset()
                self.safety.stop()
        deadline = time.monotonic() + wait_s
        while self._active and self.safety_mode in MOVING_MODES and time.monotonic() < deadline:
            time.sleep(0.005)
        return ("stopped" if was else "was not executing") + f" (safety mode {self.safety_mode or 'n/a'})"

    def estop(self, detail: str = "") -> str:
        """Latch the e-stop: stop executing and send the hold at once (not waiting for the next tick)."""
        if not self._configured:
            return "not configured"
        self.stop_policy()
        joints = self.arm._latest if self.arm is not None else None
        with self.safety.lock:  # no command of a tick computed before the e-stop goes out after its hold
            hold = self.safety.estop(joints)
            if hold is not None:
                try:
                    self.arm.send(hold)
                except ArmError as e:
                    self.get_logger().error(f"e-stop hold refused by the arm driver: {e}")
            events = self.safety.drain_events()
        self._publish_events(events)
        self.get_logger().warning(f"E-STOP latched {detail}".strip())
        return "e-stop latched"

    def _on_estop_msg(self, msg) -> None:
        if msg.data:
            self.estop(f"({self.values['estop_topic']})")

    def _srv_estop(self, request, response):
        response.message, response.success = self.estop("(service)"), True
        return response

    def _srv_reset_estop(self, request, response):
        response.success = self._configured and self.safety.reset_estop()
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
        self._reset_stats()
        response.message, response.success = "timing statistics reset", True
        return response

    # --- inputs ---------------------------------------------------------------------------------------------
    def _on_joint_state(self, sample: JointSample) -> None:
        if self.values["tick_source"] == "joint_states":
            self._tick_event.set()

    def observe(self) -> tuple[dict, JointSample]:
        """The policy observation from the freshest inputs (raises if any is stale); feeds the safety watchdog."""
        obs, joints, frames = self.inputs.observe()
        self.safety.observed(joints, frames)
        return obs, joints

    # --- control loop ---------------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        period = 1.0 / self.values["control_hz"]
        next_t = time.monotonic() + period
        while self._active:
            if self.values["tick_source"] == "timer":
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.monotonic()
                self.stats["jitter"].add(now - next_t)
                next_t = max(next_t + period, now - period)  # after a long stall, do not burst to catch up
            else:
                self._tick_event.wait(timeout=max(period * 3, self.values["max_state_age_ms"] / 1e3))
                self._tick_event.clear()
                if not self._active:
                    break
            try:
                self._tick()
            except Exception as e:  # never let the loop die silently: log and keep holding
                self.get_logger().error(f"control tick failed: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _tick(self) -> None:
        t0, cpu0 = time.monotonic(), time.thread_time()  # CPU time: the tick's own work, without preemption
        tick, self.tick = self.tick, self.tick + 1
        fault: Exception | None = None
        obs = measured = None
        try:
            obs, measured = self.observe()
        except INPUT_ERRORS as e:
            fault = e
            self.stats["stale"] += 1
            self.stats["stale_executing"] += self._executing
            if self._executing:
                self.get_logger().warning(f"holding: {e}", throttle_duration_sec=1.0)
        raw, waited = None, 0.0
        if self._executing and fault is None:
            raw, waited, fault = self._next_action(tick, obs)
        fresh = measured
        if measured is None and self.arm is not None:
            measured = self.arm._latest  # stale, but the filter brakes better knowing where the arm was
        dt = None if self._last_tick_time is None else t0 - self._last_tick_time
        with self.safety.lock:  # step + send as one: an e-stop never lands between them (docs/safety.md)
            outcome = self.safety.step(raw, measured, fault, dt)  # THE safety hook: see safety_hook.py
            if outcome.mode == "stopped" and not self._executing:
                outcome.command = None  # at rest after a stop: the arm's controller holds its last target
            if outcome.command is not None:
                try:
                    self.arm.send(outcome.command)
                except ArmError as e:
                    self.safety.driver(False, str(e))
                    self.get_logger().error(f"command refused by the arm driver: {e}", throttle_duration_sec=1.0)
        self._submit_deferred_request()
        if outcome.events:
            self._publish_events(outcome.events)
        self._last_tick_time = t0
        done = time.monotonic()
        self.stats["overhead"].add(done - t0 - waited)
        self.stats["overhead_cpu"].add(time.thread_time() - cpu0)
        if fresh is not None:
            self.stats["state_to_command"].add(done - fresh.stamp - waited)
        self.stats["ticks"] += 1
        self.safety_mode = outcome.mode
        for tap in self.taps:
            tap("command", {"tick": tick, "raw": raw, "applied": outcome.command, "events": outcome.events,
                            "fault": None if fault is None else str(fault), "episode": self.episode,
                            "obs": obs, "joints": fresh, "t": t0, "overhead_s": done - t0 - waited,
                            "waited_s": waited, "executing": self._executing, "mode": outcome.mode})

    def _next_action(self, tick: int, obs: dict) -> tuple[np.ndarray | None, float, Exception | None]:
        waited = 0.0
        with self._chunk_cond:
            if self._policy_error is not None:
                return None, 0.0, RuntimeError(f"policy failed: {self._policy_error}")
            action = self.broker.action(tick)
            if self.broker.needs_inference(tick):
                self.broker.mark_requested(tick)
                self.safety.policy("started")
                if action is not None:
                    # Requested early (lead_ticks): submit once this tick's command is out, so the forward pass
                    # does not compete with the rest of the tick for the GIL.
                    self._deferred_request = (obs, tick)
                else:
                    self._pending = (self.worker.submit(obs, tick), self.episode)
            if action is None and self.broker.pending and self.values["max_wait_ms"] > 0:
                t = time.monotonic()
                self._chunk_cond.wait_for(lambda: not self.broker.pending or not self._executing,
                                          self.values["max_wait_ms"] / 1e3)
                waited = time.monotonic() - t
                action = self.broker.action(tick) if self._executing else None
        if action is None and self.broker.chunks:
            self.stats["underruns"] += 1  # had a plan, ran out of it: the arm holds this tick
        return action, waited, None

    def _submit_deferred_request(self) -> None:
        with self._chunk_cond:
            request, self._deferred_request = self._deferred_request, None
            if request is not None and self._executing and self.broker.pending:
                self._pending = (self.worker.submit(*request), self.episode)

    def _on_chunk(self, result: ChunkResult) -> None:
        with self._chunk_cond:
            pending = getattr(self, "_pending", None)
            if not self._executing or pending is None or pending != (result.request_id, self.episode):
                return  # a chunk for an episode that was stopped meanwhile
            self.stats["inference"].add(result.latency_s)
            self.safety.policy("finished" if result.error is None else "failed", result.error or "")
            if result.error is not None:
                self._policy_error = result.error.splitlines()[0]
                self.broker.cancel_request()
                self.get_logger().error(f"policy inference failed: {result.error}")
            else:
                self.broker.put(result.actions, result.obs_tick, self.tick)
                self.stats["chunks"] += 1
            self._chunk_cond.notify_all()
        for tap in self.taps:
            tap("chunk", {"tick": result.obs_tick, "actions": result.actions, "noise": result.noise,
                          "latency_s": result.latency_s, "error": result.error, "episode": self.episode})

    def _publish_events(self, events: list[dict]) -> None:
        import json

        from std_msgs.msg import String

        for e in events:
            self._events_pub.publish(String(data=json.dumps(e, default=float)))
        for tap in self.taps:
            tap("safety", {"events": events, "episode": self.episode})

    def _stop_loop(self) -> None:
        self._active = False
        self._tick_event.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=2.0)
            self._loop_thread = None

    # --- diagnostics ----------------------------------------------------------------------------------------
    def _reset_stats(self) -> None:
        self.stats: dict[str, Any] = {"jitter": Rolling(), "overhead": Rolling(), "overhead_cpu": Rolling(),
                                      "state_to_command": Rolling(),
                                      "inference": Rolling(), "ticks": 0, "chunks": 0, "stale": 0, "stale_executing": 0,
                                      "underruns": 0}
        self._last_tick_time = None

    def diagnostics(self) -> dict[str, Any]:
        s = self.stats
        d = {"executing": self._executing, "episode": self.episode, "ticks": s["ticks"], "stale_inputs": s["stale"],
             "stale_inputs_executing": s["stale_executing"],
             "safety": self.safety.name if self._configured else "n/a", "safety_mode": self.safety_mode}
        d.update(chunks=s["chunks"], underruns=s["underruns"])
        if self._configured:
            d["bundle"] = self.bundle.bundle_id
        for k in ("jitter", "overhead", "overhead_cpu", "state_to_command", "inference"):
            for q, v in s[k].summary().items():
                d[f"{k}_{q}" + ("_ms" if q != "n" else "")] = v
        return d

    def _publish_diagnostics(self) -> None:
        from pirl_robot.deploy.diagnostics import diagnostic_array

        self._diag_pub.publish(diagnostic_array(f"pirl_deploy: {self.get_name()}", self.diagnostics(),
                                                self.safety.enforcing, self._executing,
                                                self.get_clock().now().to_msg()))


def main(argv: list[str] | None = None) -> int:
    from pirl_robot.deploy.runner import spin_nodes

    return spin_nodes([("deploy_node", DeployNode)], argv)
