"""`pirl replay execute`: a recorded HIL episode's commands re-executed on the simulated Panda (in-process driver,
reset to the recorded seed) through the deploy node's safety stage. Unfiltered, the arm retraces the recorded
joints; through the safety filter, every command sent respects its per-tick step limit and the filter's start
and controlled stop are in the events.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_utils import ROOT, shared_hil_recording  # noqa: E402

pytestmark = pytest.mark.sim
SAFETY = "ros_ws/src/pirl_robot/config/safety/panda_maniskill.yaml"


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    from pirl_robot.record.episodes import find_episodes

    return find_episodes([shared_hil_recording(tmp_path_factory)["rec"]])[0]


def test_unfiltered_reexecution_retraces_the_recording(episode):
    from pirl_robot.replay.execute import execute_episode, maniskill_arm

    arm, step = maniskill_arm(episode)
    try:
        res = execute_episode(episode, arm, "unfiltered", step=step, realtime=False)
    finally:
        arm.disconnect()
    c = episode.columns()
    assert res.commands == res.sent == c["command.sent"].sum()
    np.testing.assert_allclose(res.sent_commands[: res.commands], c["command.applied"][c["command.sent"]], atol=1e-6)
    # same seed, same commands: the first ticks see the recorded joints (later ones drift: the HIL arm also
    # stepped on its own clock while inputs were late)
    np.testing.assert_allclose(res.measured[:3], res.recorded[:3], atol=1e-3)
    assert "| panda_joint1 |" in res.markdown()


def test_reexecution_through_the_safety_filter(episode):
    from pirl_robot.replay.execute import execute_episode, maniskill_arm
    from pirl_robot.safety import load_safety_config
    from pirl_robot.spec import PolicySpec

    arm, step = maniskill_arm(episode)
    try:
        res = execute_episode(episode, arm, str(ROOT / SAFETY), source="policy", step=step, realtime=False)
    finally:
        arm.disconnect()
    causes = [e["cause"] for e in res.events]
    assert "pirl_robot.safety" in res.safety and "start" in causes and causes[-1] == "stopped", causes
    max_step = load_safety_config(ROOT / SAFETY, spec=PolicySpec.from_dict(episode.meta["spec"])).vectors()["max_step"]
    sent = episode.schema.command_to_action(res.sent_commands)
    assert len(sent) >= res.commands and np.all(np.abs(np.diff(sent, axis=0)) <= max_step + 1e-9)
    assert res.modified > 0  # the random policy asks for more than the limits allow


def test_cli_reexecutes_with_the_recorded_safety_config(episode, tmp_path):
    """By default an episode re-executes through the safety config it ran with; the CLI writes the comparison."""
    from pirl_robot.replay.cli import main

    assert main(["execute", str(episode.root), "--arm", "maniskill", "--out", str(tmp_path)]) == 0
    assert "pirl_robot.safety" in (tmp_path / "execute.md").read_text()


@pytest.mark.slow
def test_reexecution_over_ros_on_the_sim_arm_node(episode, tmp_path):
    """`--arm ros`: the commands go over DDS to the simulated arm node, paced at the recorded rate."""
    import json
    import subprocess

    from deploy_utils import free_domain_id, ros_context, ros_env, spin_in_thread
    from pirl_robot.deploy.evaluate import HilClient
    from rclpy.node import Node

    domain = free_domain_id()
    env = {**ros_env(domain), "OMP_NUM_THREADS": "1"}
    sim = subprocess.Popen([sys.executable, "-c", "import sys; from pirl_robot.drivers.arms.sim_arm_node import main; "
                            "sys.exit(main(sys.argv[1:]))", "--ros-args", "-r", "__node:=sim_arm_node",
                            "--params-file", str(ROOT / "ros_ws/src/pirl_robot/config/panda_maniskill.yaml"),
                            "--log-level", "warn"], env=env, cwd=ROOT)
    ctx = ros_context(domain)
    node = Node("watch_sim", context=ctx)
    client = HilClient(node)
    stop = spin_in_thread([node], ctx)
    try:
        client.wait(lambda: client.status is not None, 90, "the sim arm node")
        out = subprocess.run([sys.executable, "-m", "pirl_robot.cli", "replay", "execute", str(episode.root),
                              "--arm", "ros", "--out", str(tmp_path)], env=env, cwd=ROOT, timeout=120,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads((tmp_path / "execute.json").read_text())
        assert res["commands"] == episode.columns()["command.sent"].sum()
        assert res["sent"] >= res["commands"] - res["stale_ticks"]  # a stale joint state holds a tick
        client.wait(lambda: client.status["commands"] >= res["sent"] - 1, 10, "the commands at the sim arm")
    finally:
        stop()
        sim.terminate()
        sim.wait(timeout=30)
