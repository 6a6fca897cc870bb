"""Deploy node overhead and control-loop jitter over DDS on loopback (goal: p99 overhead <= 2 ms).

    python bench/bench_deploy.py                 # ~1 min: three runs of 10 s after a 3 s warm-up each
    python bench/bench_deploy.py --seconds 30    # longer runs, steadier tails
    python bench/bench_deploy.py --executor multi_threaded   # the node on rclpy's Python executor, to compare

The deploy node runs in its own process (as `pirl deploy` / ros2 launch run it) with a small flow policy; this
process plays the arm: it publishes sensor_msgs/JointState at 50 Hz and receives the JointTrajectory commands.

Phase 1, tick_source=joint_states (every joint state triggers a tick), once without and once with the safety
filter (configs/robot/panda.yaml, end-effector workspace check included). Reported: the node's own overhead per
tick (observation assembly, chunk broker, safety stage, message build and publish; the policy forward runs on the
inference thread and any wait for it is excluded), the node's state-received -> command-published time, and the
round trip seen from outside (state published -> command received, two DDS hops included). The next chunk is
requested two ticks early (lead_ticks=2), so no tick waits for the policy.
Phase 2, tick_source=timer at 50 Hz (with the filter): wake-up jitter of the control loop (actual - scheduled
tick time) and the spread of command inter-arrival times at the receiver.
Results go to stdout as a table and to bench/results/deploy.json. Timing figures need an otherwise idle machine;
on a shared one the overhead's CPU-time row (the tick thread's own work, without the time it waited for a core)
is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
ACTIONS = JOINTS[:7] + ["gripper"]
HOME = [0.0, 0.4, 0.0, -1.9, 0.0, 2.3, 0.8, 0.04, 0.04]
HZ = 50.0


def make_bundle(tmp: Path) -> Path:
    import torch

    from pirl_robot.bundle import export_bundle
    from pirl_robot.models.factory import build_model
    from pirl_robot.policy import Policy
    from pirl_robot.spec import PolicySpec
    from pirl_robot.transforms import PolicyTransforms

    from pirl_robot.transforms import Stats

    spec = PolicySpec(state_names=tuple(f"qpos.{j}" for j in JOINTS), action_names=tuple(ACTIONS),
                      action_state_index=tuple(range(7)) + (-1,), control_hz=HZ, chunk_size=8, exec_horizon=8)
    torch.manual_seed(0)
    model = build_model("flow_mlp", {"hidden": 128, "depth": 2}, spec)
    home = torch.tensor(HOME)
    stats = PolicyTransforms(spec, Stats(home, torch.full((9,), 0.1)),  # actions near the home pose: the filter
                             Stats(torch.cat([home[:7], torch.ones(1)]), torch.full((8,), 0.05)))  # mostly passes
    Policy(spec=spec, model=model.eval(), transforms=stats).save(tmp / "ckpt")
    return export_bundle(tmp / "ckpt", tmp / "bundle")


def start_node(tmp: Path, bundle: Path, domain: int, tick_source: str, safety: str,
               lock: bool, executor: str) -> subprocess.Popen:
    from pirl_robot.deploy.plan import NodePlan
    from pirl_robot.deploy.runner import node_command

    params = {"bundle": str(bundle), "robot": "panda", "control_hz": HZ, "state_names": [f"qpos.{j}" for j in JOINTS],
              "action_names": ACTIONS, "action_state_index": list(range(7)) + [-1], "command_topic": "/bench/cmd",
              "command_names": JOINTS[:8], "command_scale": [1.0] * 7 + [0.025], "command_offset": [0.0] * 7 + [0.015],
              "tick_source": tick_source, "lead_ticks": 2, "autostart": True, "seed": 0,
              "diagnostics_period_s": 0.5, "safety_config": safety, "lock_memory": lock, "executor": executor}
    f = tmp / f"{tick_source}_{Path(safety).stem}.yaml"
    f.write_text(yaml.safe_dump({"deploy_node": {"ros__parameters": params}}))
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    return subprocess.Popen(node_command(NodePlan("deploy_node", "deploy_node", str(f)), str(f), "warn"), env=env)


def run_phase(ctx, seconds: float, warmup: float) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from pirl_robot.drivers.ros_msgs import qos

    from std_srvs.srv import Trigger

    node = Node("bench_arm", context=ctx)
    reset_stats = node.create_client(Trigger, "/deploy_node/reset_stats")
    t_end = float("inf")  # set once commands flow and warm-up is over
    pub = node.create_publisher(JointState, "/joint_states", qos("sensor", 5))
    last_pub = [None]
    recv, latency, diag = [], [], {}

    def on_cmd(msg):
        now = time.monotonic()
        recv.append(now)
        if last_pub[0] is not None and now < t_end:  # after the last state, the node holds on stale input
            latency.append(now - last_pub[0])

    def on_diag(msg):
        for st in msg.status:
            if st.name.startswith("pirl_deploy"):
                diag.update({kv.key: kv.value for kv in st.values})

    node.create_subscription(JointTrajectory, "/bench/cmd", on_cmd, qos("reliable", 50))
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [ex.spin_once(0.05) for _ in iter(stop.is_set, True)], daemon=True)
    spinner.start()
    msg = JointState(name=JOINTS, position=list(HOME), velocity=[0.0] * len(JOINTS))
    next_t = time.monotonic()
    first_cmd = None
    deadline = time.monotonic() + 60.0
    while time.monotonic() < t_end:
        next_t += 1.0 / HZ
        time.sleep(max(0.0, next_t - time.monotonic()))
        msg.header.stamp = node.get_clock().now().to_msg()
        last_pub[0] = time.monotonic()
        pub.publish(msg)
        if first_cmd is None and recv:
            first_cmd = time.monotonic()
        if t_end == float("inf"):  # start-up, discovery, first chunks and lazy first calls: not measured
            if first_cmd is None and time.monotonic() > deadline:
                raise SystemExit("no command from the deploy node within 60 s (see its log)")
            if first_cmd is not None and time.monotonic() - first_cmd >= warmup:
                reset_stats.call_async(Trigger.Request())
                t_end = time.monotonic() + seconds
            latency.clear()
            recv.clear()
    time.sleep(1.2)  # one more diagnostics message
    stop.set()
    spinner.join(timeout=2)
    ex.shutdown()
    node.destroy_node()
    return {"recv": np.array(recv), "latency": np.array(latency), "diag": dict(diag)}


def pct(x: np.ndarray, scale: float = 1e3) -> tuple[float, float, float]:
    if x.size == 0:
        return (float("nan"),) * 3
    return (float(np.percentile(x, 50) * scale), float(np.percentile(x, 99) * scale), float(x.max() * scale))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of commands before measuring (the node's "
                    "statistics are reset then)")
    ap.add_argument("--domain", type=int, default=150 + os.getpid() % 50)
    ap.add_argument("--executor", choices=("events", "multi_threaded"), default="events",
                    help="the deploy node's executor parameter")
    ap.add_argument("--no-lock-memory", action="store_true", help="run the node (and this stand-in arm) without "
                    "mlockall, to see what page faults under background memory reclaim cost")
    args = ap.parse_args()
    if not args.no_lock_memory:  # the stand-in arm is a driver process: same real-time hygiene as the node
        from pirl_robot.deploy.realtime import lock_memory

        print(f"lock_memory: {lock_memory() or 'ok'}")
    os.environ["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    import rclpy

    rows, out = [], {"seconds": args.seconds, "control_hz": HZ}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bundle = make_bundle(tmp)
        for phase, safety in (("joint_states", "unfiltered"), ("joint_states", "configs/robot/panda.yaml"),
                              ("timer", "configs/robot/panda.yaml")):
            proc = start_node(tmp, bundle, args.domain, phase, safety, not args.no_lock_memory, args.executor)
            ctx = rclpy.Context()
            rclpy.init(context=ctx, domain_id=args.domain)
            try:
                time.sleep(3.0)  # node start-up (imports, bundle load)
                r = run_phase(ctx, args.seconds, args.warmup)
            finally:
                ctx.try_shutdown()
                proc.terminate()
                proc.wait(timeout=10)
            dg = r["diag"]
            if not r["recv"].size or not dg:
                raise SystemExit(f"phase {phase} / {safety}: no commands or diagnostics (see the node's log)")
            get = lambda k: float(dg.get(k, "nan"))  # noqa: E731
            tag = "no filter" if safety == "unfiltered" else "safety filter"
            if phase == "joint_states":
                rows.append((f"[{tag}] node overhead per tick (excl. policy)", get("overhead_p50_ms"),
                             get("overhead_p99_ms"), get("overhead_max_ms")))
                rows.append((f"[{tag}]   the same, tick thread CPU time", get("overhead_cpu_p50_ms"),
                             get("overhead_cpu_p99_ms"), get("overhead_cpu_max_ms")))
                rows.append((f"[{tag}] node: state received -> command sent", get("state_to_command_p50_ms"),
                             get("state_to_command_p99_ms"), get("state_to_command_max_ms")))
                rows.append((f"[{tag}] round trip: state published -> command received", *pct(r["latency"])))
                if safety == "unfiltered":
                    rows.append(("policy forward (inference thread, for reference)", get("inference_p50_ms"),
                                 get("inference_p99_ms"), get("inference_max_ms")))
                out[f"ticks_{tag}"], out[f"underruns_{tag}"] = dg.get("ticks"), dg.get("underruns")
            else:
                rows.append(("timer tick wake-up jitter (50 Hz)", get("jitter_p50_ms"), get("jitter_p99_ms"),
                             get("jitter_max_ms")))
                dev = np.abs(np.diff(r["recv"]) - 1.0 / HZ)
                rows.append(("command inter-arrival |dt - 20 ms| at receiver", *pct(dev)))
                out["timer_ticks"] = dg.get("ticks")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'p50 ms':>8}  {'p99 ms':>8}  {'max ms':>8}")
    for name, p50, p99, mx in rows:
        print(f"{name:<{width}}  {p50:8.3f}  {p99:8.3f}  {mx:8.3f}")
    print(f"({ {k: v for k, v in out.items() if k.startswith(('ticks', 'underruns'))} }; goal: p99 overhead <= 2 ms)")
    out["rows"] = [{"measure": n, "p50_ms": a, "p99_ms": b, "max_ms": c} for n, a, b, c in rows]
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "deploy.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
