"""Hardware in the loop over real DDS: a flow policy trained in simulation (behaviour cloning on scripted-expert
demos), exported as a bundle, run by `pirl deploy --processes several` (deploy node and ManiSkill-backed simulated
arm in separate processes), episodes driven through the nodes' ROS services. The success rate is reported next to
the in-sim evaluation of the same bundle on the same seeds and policy noise.

The two rates are compared, not the episodes one by one: ManiSkill's CPU physics depends on the env's reset
history (the same seed and actions can end differently), so even two in-sim runs differ on some episodes.

The simulated arm runs in lockstep (step_on: command, LOCKSTEP below): one simulator step per command, its state
out at once, and the deploy node ticking on each joint state, so the episode runs step for step with the node
however loaded the machine is (a late tick delays the episode, never changes it). That is what keeps these tests
in the default suite; the arm's own real-time clock (step_on: clock) is what bench/bench_deploy.py measures.
The short test measures the deploy path itself (safety_config: unfiltered, as for any simulated arm). The slow
test also runs it as configured, with the safety filter and the simulated Panda's datasheet limits
(config/safety/panda_maniskill.yaml), and reports that rate too: policies behaviour-cloned on the unconstrained
scripted expert move faster than those limits allow, and the filter slows them below what 50-step episodes need.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_utils import free_domain_id, ros_context, ros_env, spin_in_thread, train_bc_checkpoint
from pirl_robot.bundle import export_bundle, load_bundle

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.sim


# Lockstep: the arm waits for each command, so the node may wait for its inputs and chunks as long as a loaded
# machine needs (no tick is lost to a stale input or an underrun); the arm's keep-alive keeps idle inputs fresh.
LOCKSTEP = {"sim_arm_node.step_on": "command", "sim_arm_node.lockstep_keepalive_s": 0.5,
            "deploy_node.max_state_age_ms": 2000.0, "deploy_node.max_wait_ms": 2000.0}


def run_hil(tmp_path, demos: int, steps: int, episodes: int, filtered: bool = False, bundle=None) -> dict:
    from rclpy.node import Node

    from pirl_robot.deploy.evaluate import HilClient, evaluate_in_sim, success_rate
    from sim.maniskill.config import TaskConfig

    if bundle is None:
        ckpt = train_bc_checkpoint(tmp_path / "ckpt", episodes=demos, steps=steps)
        bundle = export_bundle(ckpt, tmp_path / "bundle")
    domain = free_domain_id()
    env = {**ros_env(domain), "OMP_NUM_THREADS": "1"}
    extra = [] if filtered else ["--param", "deploy_node.safety_config=unfiltered"]
    for name, value in LOCKSTEP.items():
        extra += ["--param", f"{name}={value}"]
    proc = subprocess.Popen([sys.executable, "-m", "pirl_robot.deploy.runner", "--bundle", str(bundle),
                             "--processes", "several", "--log-level", "warn", *extra], env=env, cwd=ROOT)
    ctx = ros_context(domain)
    node = Node("hil_evaluator", context=ctx)
    diag: dict = {}

    def on_diag(msg):
        for st in msg.status:
            if st.name.startswith("pirl_deploy"):
                diag.update({kv.key: kv.value for kv in st.values})

    from collections import Counter

    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    events: Counter = Counter()
    node.create_subscription(String, "/deploy_node/safety_events",
                             lambda m: events.update([json.loads(m.data)["cause"]]), 100)
    client = HilClient(node)
    stop = spin_in_thread([node], ctx)
    try:
        t0 = time.monotonic()
        hil = [client.run_episode(noise_seed_base=0, timeout=90) for _ in range(episodes)]
        hil_seconds = time.monotonic() - t0
        time.sleep(1.2)  # one more diagnostics message
    finally:
        stop()
        proc.terminate()
        proc.wait(timeout=30)
    sim = evaluate_in_sim(load_bundle(bundle), TaskConfig(task="PushCube-v1"), [r.seed for r in hil],
                          [r.noise_seed for r in hil])
    report = {"episodes": episodes, "demos": demos, "bc_steps": steps, "safety_filter": filtered,
              "bundle": str(bundle),
              "hil_success_rate": success_rate(hil), "sim_success_rate": success_rate(sim),
              "hil_seconds": round(hil_seconds, 1), "deploy_diagnostics": dict(diag),
              "safety_events": dict(events),
              "hil": [r.as_dict() for r in hil], "sim": [r.as_dict() for r in sim]}
    print(f"\nHIL over DDS ({'safety filter' if filtered else 'unfiltered'}) vs in-sim, same bundle/seeds/noise:",
          json.dumps({k: report[k] for k in ("episodes", "hil_success_rate", "sim_success_rate", "hil_seconds")}),
          "\n  HIL:", [(r.seed, r.success_once) for r in hil], "\n  sim:", [(r.seed, r.success_once) for r in sim],
          "\n  deploy:", {k: diag.get(k) for k in ("ticks", "chunks", "underruns", "stale_inputs",
                                                     "stale_inputs_executing", "state_to_command_p99_ms")},
          "\n  safety events:", dict(events))
    out = Path(os.environ.get("PIRL_HIL_REPORT", tmp_path / "hil_report.json"))
    out.write_text(json.dumps(report, indent=2, default=str))
    return report


def check_every_step_commanded(report):
    for r in report["hil"]:
        # In lockstep every step is a command's (on the arm's own clock a starved CPU could skip some: the bound
        # below is what that mode needs; real-time behaviour is bench/bench_deploy.py's).
        assert r["steps"] == 50 and r["commands"] >= r["steps"] // 2, r
    d = report["deploy_diagnostics"]
    assert int(d["underruns"]) == 0, d  # a plan was always there: the policy kept up with the arm
    assert int(d["chunks"]) >= report["episodes"] * 50 // 8


def test_hil_short(tmp_path):
    report = run_hil(tmp_path, demos=50, steps=1500, episodes=4)
    check_every_step_commanded(report)
    assert report["sim_success_rate"] >= 0.25, "the quickly trained policy should solve some episodes in sim"
    assert report["hil_success_rate"] >= report["sim_success_rate"] - 0.5
    assert "UNFILTERED" in report["deploy_diagnostics"]["safety"]


@pytest.mark.slow
def test_hil_long(tmp_path):
    report = run_hil(tmp_path, demos=100, steps=3000, episodes=20)
    check_every_step_commanded(report)
    assert report["hil_success_rate"] >= 0.4
    assert report["hil_success_rate"] >= report["sim_success_rate"] - 0.3
    filtered = run_hil(tmp_path, 100, 3000, episodes=10, filtered=True, bundle=Path(report["bundle"]))
    check_every_step_commanded(filtered)  # rate reported only: see the module docstring
    assert "pirl_robot.safety" in filtered["deploy_diagnostics"]["safety"] and filtered["safety_events"]["start"]


def test_pirl_deploy_one_process_with_start(tmp_path):
    """`pirl deploy --start` in one process: both nodes come up from the same parameter file and the simulated
    arm receives the deploy node's commands over DDS."""
    from rclpy.node import Node

    from deploy_utils import tiny_policy
    from pirl_robot.deploy.evaluate import HilClient
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    tiny_policy(task_spec(TaskConfig(task="PushCube-v1"))).save(tmp_path / "ckpt")
    bundle = export_bundle(tmp_path / "ckpt", tmp_path / "bundle")
    domain = free_domain_id()
    proc = subprocess.Popen([sys.executable, "-m", "pirl_robot.cli", "deploy", "--bundle", str(bundle), "--start",
                             "--param", "deploy_node.safety_config=unfiltered", "--log-level", "warn"],
                            env={**ros_env(domain), "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    ctx = ros_context(domain)
    node = Node("watcher", context=ctx)
    client = HilClient(node)
    stop = spin_in_thread([node], ctx)
    try:
        # The arm has received and executed the deploy node's commands (rates are for bench/bench_deploy.py).
        client.wait(lambda: client.status is not None and client.status["commands"] >= 10, 90, "10 commands")
        assert client.status["step"] >= 1
    finally:
        stop()
        proc.terminate()
        assert proc.wait(timeout=30) in (0, -15, 143)
