"""Every deploy node parameter in one table: name, default, description, validation.

The node declares its ROS parameters from this table (with descriptors) and validates every change against it;
`pirl deploy`, the launch file and the config yaml files are checked against it by tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pirl_robot.drivers.arms.ros2_control import INTERFACES
from pirl_robot.spec import ACTION_TYPES

Check = Callable[[Any, dict], str | None]  # (value, all current values) -> error message or None


TYPES = {"str": str, "int": int, "float": float, "bool": bool, "str[]": str, "int[]": int, "float[]": float}


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # one of TYPES; "x[]" is a list of x
    default: Any
    description: str
    check: Check | None = None
    dynamic: bool = False  # may change while the node is active; the others are fixed once configured

    def validate(self, value: Any, values: dict) -> str | None:
        item = TYPES[self.type]
        ok = (lambda x: isinstance(x, item) and not (item is int and isinstance(x, bool))
              or (item is float and isinstance(x, int) and not isinstance(x, bool)))
        if self.type.endswith("[]"):
            if not isinstance(value, (list, tuple)) or not all(ok(x) for x in value):
                return f"must be a list of {item.__name__}, got {value!r}"
        elif not ok(value):
            return f"must be {item.__name__}, got {type(value).__name__} {value!r}"
        return self.check(value, values) if self.check else None


def _positive(v, _):
    return None if v > 0 else "must be > 0"


def _non_negative(v, _):
    return None if v >= 0 else "must be >= 0"


def _one_of(options):
    return lambda v, _: None if v in options else f"must be one of {list(options)}"


def _cameras(v, _):
    from pirl_robot.deploy.robot import parse_camera_entry

    for entry in v:
        try:
            parse_camera_entry(entry)
        except ValueError as e:
            return str(e)
    return None


def _same_length_as_commands(v, values):
    n = len(values.get("command_names") or values.get("action_names") or [])
    return None if len(v) in (0, n) else f"needs 0 or {n} entries (one per command), got {len(v)}"


def _finite(v, _):
    import math

    return None if all(math.isfinite(x) for x in v) else "must be finite"


def _policy_source(v, _):
    from pirl_robot.serve.client import SCHEMES

    scheme, sep, rest = v.partition("://")
    if sep and (scheme not in SCHEMES or ":" not in rest):
        return f"a served policy is remote://HOST:PORT or remote+tls://HOST:PORT, got {v!r}"
    return None


PARAMS: tuple[Param, ...] = (
    Param("bundle", "str", "", "Path of the policy bundle (pirl export) to load on configure, or the policy server "
          "(pirl serve) that serves it: remote://HOST:PORT, remote+tls://HOST:PORT.", _policy_source),
    # --- remote policy (pirl serve; docs/deploy.md) -----------------------------------------------------------
    Param("remote_token_env", "str", "PIRL_SERVE_TOKEN", "Environment variable holding the policy server's token "
          "(kept out of parameters, which anyone on the ROS graph can read)."),
    Param("remote_timeout_ms", "float", 1000.0, "A remote inference without an answer after this long is a policy "
          "fault (hold, then a controlled stop); the connection is dropped and remade on the next start.", _positive),
    Param("remote_tls_ca", "str", "", "CA certificate file for remote+tls:// (empty: the system's CAs)."),
    Param("device", "str", "cpu", "Torch device for the policy.", _one_of(("cpu", "cuda"))),
    # --- the robot, as the bundle's spec must match it --------------------------------------------------------
    Param("robot", "str", "panda", "Robot name; must equal the bundle spec's robot."),
    Param("control_hz", "float", 20.0, "Control rate (Hz); must equal the bundle spec's control_hz.", _positive),
    Param("state_names", "str[]", [], "Policy state entries the robot provides, in order: 'qpos.<joint>' / "
          "'qvel.<joint>' come from joint states, other names from the task state topic."),
    Param("action_names", "str[]", [], "Policy action entries the robot takes, in order."),
    Param("action_type", "str", "joint_pos", "How actions are interpreted.", _one_of(ACTION_TYPES)),
    Param("action_state_index", "int[]", [], "For each action entry, the state entry it commands (-1: none)."),
    Param("cameras", "str[]", [], "Cameras as 'name=HxW=source', source 'topic:/t', 'opencv:/dev/video0' or "
          "'realsense:<serial>'; images are resized to HxW.", _cameras),
    Param("camera_calibrations", "str[]", [], "This robot's camera calibrations as 'camera=path.yaml' (pirl "
          "calibrate): compared with the bundle's on configure (deploy/calibration_check.py)."),
    Param("calibration_check", "str", "warn", "Live camera vs the bundle's calibration beyond tolerance (3 px, "
          "10 mm, 1 deg): 'warn', 'refuse' (configure fails) or 'off'.", _one_of(("warn", "refuse", "off"))),
    Param("safety_config", "str", "", "Robot yaml with a 'safety:' section (limits, watchdog; docs/safety.md), "
          "relative paths from the repository root; 'unfiltered' runs without limits (simulated arms, tests)."),
    Param("estop_topic", "str", "/estop", "std_msgs/Bool: true presses the e-stop (latches until ~/reset_estop)."),
    # --- inputs ---------------------------------------------------------------------------------------------
    Param("joint_states_topic", "str", "/joint_states", "sensor_msgs/JointState input."),
    Param("task_state_topic", "str", "", "Optional sensor_msgs/JointState carrying named non-joint state entries "
          "(object tracker, simulator); empty: none."),
    Param("max_state_age_ms", "float", 100.0, "Joint/task state older than this is stale (hold).", _positive, True),
    Param("max_image_age_ms", "float", 200.0, "Camera frames older than this are stale (hold).", _positive, True),
    # --- command output ---------------------------------------------------------------------------------------
    Param("command_interface", "str", "trajectory", "'trajectory': trajectory_msgs/JointTrajectory (joint trajectory "
          "controller); 'position': std_msgs/Float64MultiArray (forward position controller).",
          _one_of(INTERFACES)),
    Param("command_topic", "str", "/joint_trajectory_controller/joint_trajectory", "Command output topic."),
    Param("command_names", "str[]", [], "Joint names of the command entries (default: action_names)."),
    Param("command_scale", "float[]", [], "Per-entry scale from policy action to command units (empty: 1).",
          lambda v, vals: _same_length_as_commands(v, vals) or _finite(v, vals)),
    Param("command_offset", "float[]", [], "Per-entry offset added after scaling (empty: 0).",
          lambda v, vals: _same_length_as_commands(v, vals) or _finite(v, vals)),
    Param("trajectory_time_from_start", "float", 0.0, "time_from_start of the trajectory point (s); 0: one control "
          "period.", _non_negative),
    # --- timing ---------------------------------------------------------------------------------------------
    Param("tick_source", "str", "timer", "'timer': tick at control_hz; 'joint_states': tick on each joint state "
          "message (synchronised with the arm's state rate).", _one_of(("timer", "joint_states"))),
    Param("exec_horizon", "int", 0, "Actions executed per chunk before the next (0: the bundle's).", _non_negative),
    Param("lead_ticks", "int", 0, "Request the next chunk this many ticks early (covers inference latency).",
          _non_negative, True),
    Param("blend_ticks", "int", 0, "Crossfade overlapping chunks over this many ticks.", _non_negative, True),
    Param("chunking", "str", "blend", "'blend': the next chunk is sampled on its own (blend_ticks crossfades it in); "
          "'rtc': real-time chunking, the next chunk is sampled to continue the actions being executed "
          "(flow/rtc.py; use with lead_ticks >= the inference delay, blend_ticks 0).", _one_of(("blend", "rtc"))),
    Param("rtc_inference_delay", "int", 0, "RTC: ticks a chunk takes to arrive, its first actions frozen to the "
          "current plan; 0: the measured median inference time in ticks.", _non_negative, True),
    Param("rtc_execution_horizon", "int", 0, "RTC: guidance fades out at this index of the new chunk (0: where the "
          "current plan ends).", _non_negative, True),
    Param("max_wait_ms", "float", 20.0, "At a tick without an action, wait this long for the chunk in flight before "
          "holding.", _non_negative, True),
    Param("seed", "int", -1, "Seed for the policy's initial noise (-1: random per run).", lambda v, _: None if v >= -1
          else "must be >= -1"),
    Param("activate_on_start", "bool", True, "Configure and activate right after start (else wait for lifecycle "
          "transitions from a manager)."),
    Param("autostart", "bool", False, "Start executing the policy as soon as the node is active."),
    Param("executor", "str", "multi_threaded", "rclpy executor of the node's process: 'multi_threaded' (~/stop "
          "answers once the arm is at rest) or 'events' (rclpy's C++ EventsExecutor: far less executor overhead and "
          "tail latency; ~/stop answers as the controlled stop begins).", _one_of(("multi_threaded", "events"))),
    Param("torch_threads", "int", 0, "Intra-op threads of the policy forward; 0: all cores but one, so the control "
          "loop and DDS keep a core (an oversubscribed OpenMP pool stalls ticks for 100s of ms).", _non_negative),
    Param("lock_memory", "bool", True, "mlockall the node's pages on configure so background memory reclaim cannot "
          "turn a control tick into a page fault (real-time practice; a failure is a warning)."),
    Param("diagnostics_period_s", "float", 1.0, "Period of /diagnostics messages (s).", _positive),
    # --- recording and Rerun (pirl_robot/record, docs/record_replay.md) -----------------------------------------
    Param("record_dir", "str", "", "Record every episode under this directory (one LeRobotDataset per episode, "
          "sidecars, .rrd); empty: no recording."),
    Param("record_operator", "str", "", "Who runs the evaluation (stored with every episode)."),
    Param("record_outcome", "str", "operator", "'operator': success/failure entered on ~/episode_outcome "
          "(std_srvs/SetBool) or with the operator console; 'sim:<topic>' (e.g. sim:/sim_arm_node/episode): from "
          "the simulated arm's episode status.",
          lambda v, _: None if v == "operator" or (v.startswith("sim:/") and len(v) > 5)
          else "must be 'operator' or 'sim:/<status topic>'"),
    Param("record_video", "bool", False, "Store camera frames as MP4 (smaller, lossy) instead of PNG (lossless: "
          "offline replay reproduces actions exactly)."),
    Param("rerun", "str", "", "Rerun live view: '' off, 'connect' (a viewer on this machine), 'serve' (host a "
          "gRPC server), a rerun+http://HOST:PORT/proxy URL, or a .rrd path. Recorded episodes get a .rrd each "
          "either way.",
          lambda v, _: None if v in ("", "connect", "serve") or v.startswith(("rerun://", "rerun+http://",
                                                                              "rerun+https://")) or v.endswith(".rrd")
          else "must be '', 'connect', 'serve', a rerun+http:// URL or a path ending in .rrd"),
)

BY_NAME = {p.name: p for p in PARAMS}


def defaults() -> dict[str, Any]:
    return {p.name: p.default for p in PARAMS}


def validate(values: dict[str, Any]) -> list[str]:
    """Errors for a full set of values (unknown names included)."""
    errors = [f"unknown parameter {k!r}" for k in values if k not in BY_NAME]
    full = {**defaults(), **values}
    for k, v in values.items():
        if k in BY_NAME:
            msg = BY_NAME[k].validate(v, full)
            if msg:
                errors.append(f"{k}: {msg}")
    return errors



def ros_parameters(values: dict[str, Any]) -> list:
    """rclpy Parameters with the table's types. Empty lists are left out: rclpy types them as byte arrays, and
    unset list parameters read as empty anyway."""
    from rclpy.parameter import Parameter

    kinds = {"str[]": Parameter.Type.STRING_ARRAY, "int[]": Parameter.Type.INTEGER_ARRAY,
             "float[]": Parameter.Type.DOUBLE_ARRAY, "float": Parameter.Type.DOUBLE}
    out = []
    for k, v in values.items():
        if isinstance(v, (list, tuple)) and not v:
            continue
        kind = kinds.get(BY_NAME[k].type) if k in BY_NAME else None
        if kind is Parameter.Type.DOUBLE_ARRAY:
            v = [float(x) for x in v]
        elif kind is Parameter.Type.DOUBLE:
            v = float(v)
        out.append(Parameter(k, kind, v) if kind else Parameter(k, value=v))
    return out
