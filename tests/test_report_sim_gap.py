"""`pirl report --sim-gap`: recorded applied commands re-executed in the simulated twin. On episodes from the
simulated arm itself the gap must come out near zero; with an injected delay or gain error it must show."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.sim
SIM_PANDA = "ros_ws/src/pirl_robot/config/safety/panda_maniskill.yaml"


def test_lag_and_rmse_of_known_shifts():
    from pirl_robot.report.sim_gap import joint_gap

    t = np.linspace(0, 2 * np.pi, 80)
    sim = np.stack([np.sin(t), 0.5 * np.cos(t)], axis=1)
    real = np.concatenate([np.repeat(sim[:1], 3, axis=0), sim[:-3]])  # 3 periods late
    rows = joint_gap(real, sim, 0.05, ("a", "b"))
    assert [r["lag_ms"] for r in rows] == [150.0, 150.0]
    assert joint_gap(sim, sim, 0.05, ("a", "b"))[0]["rmse_rad"] == 0.0


def _expert_trace():
    """An episode of the simulated arm driven in-process by the scripted expert, as the recorder would keep it:
    the joints each tick started from and the command sent (arm joints + finger position, metres)."""
    from pirl_robot.drivers.arms.maniskill_arm import ManiSkillArm, gripper_to_finger
    from pirl_robot.report.sim_gap import Trace
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.experts import make_expert

    arm = ManiSkillArm(TaskConfig(task="PushCube-v1"))
    arm.connect()
    arm.reset(1234)
    expert = make_expert("PushCube-v1", seed=0)
    expert.reset(arm.env.privileged())
    real, cmds = [], []
    for _ in range(30):
        real.append(arm.env.privileged()["qpos"].copy())
        a = expert.act(arm.env.privileged())
        cmd = np.concatenate([a[:7], [gripper_to_finger(a[7])]])
        arm.send(cmd)
        cmds.append(cmd)
        arm.step()
    arm.disconnect()
    return Trace("expert/episode", "PushCube-v1", 1234, 0.05, arm.joint_names, np.asarray(real), arm.command_names,
                 np.asarray(cmds), np.ones(len(cmds), bool))


def test_twin_reproduces_the_simulated_arm_and_shows_injected_faults(tmp_path):
    from pirl_robot.report.sim_gap import episode_gap

    trace = _expert_trace()
    clean = episode_gap(trace, tmp_path)
    assert clean["max_dev_rad"] < 1e-4 and all(r["lag_ms"] == 0 for r in clean["joints"])
    late = episode_gap(trace, tmp_path, delay_ticks=2)
    moving = [r for r in late["joints"] if r["range_rad"] > 0.05]
    assert moving and all(r["lag_ms"] == 100.0 for r in moving), late["joints"]
    weak = episode_gap(trace, tmp_path, gain=0.5)
    assert weak["rmse_mean_rad"] > 20 * max(clean["rmse_mean_rad"], 1e-4)
    assert (tmp_path / clean["plot"]).is_file()


@pytest.mark.slow  # trains a small BC policy (~1 min) and records 3 HIL episodes over DDS (~1.5 min)
def test_sim_gap_on_recorded_hil_episodes(tmp_path):
    from deploy_utils import train_bc_checkpoint
    from pirl_robot.bundle import export_bundle
    from pirl_robot.report.cli import main
    from record_utils import record_hil

    ckpt = train_bc_checkpoint(tmp_path / "ckpt", episodes=20, steps=600, safety_config=SIM_PANDA)
    record_hil(tmp_path / "rec", export_bundle(ckpt, tmp_path / "bundle"), episodes=3)
    out = {}
    for name, args in (("none", []), ("delay", ["--inject-delay-ticks", "2"]), ("gain", ["--inject-gain", "0.6"])):
        assert main([str(tmp_path / "rec"), "--sim-gap", "--out", str(tmp_path / name), *args]) == 0
        out[name] = json.loads((tmp_path / name / "sim_gap.json").read_text())
    rmse = {k: float(np.mean([r["rmse_rad"] for r in v["joints"]])) for k, v in out.items()}
    lags = {k: [r["lag_ms"] for r in v["joints"]] for k, v in out.items()}
    print(f"\nsim gap on HIL episodes: mean joint RMSE (rad) {rmse}; lags (ms) {lags}")
    # measured 2026-11-27, two runs (none / delay / gain): 0.0043 / 0.0194 / 0.0123 and, with more CPU load from
    # other jobs, 0.0082 / 0.0247 / 0.0152. What is left with no injection comes from the HIL loop itself (commands
    # that missed the arm's step under load, the first command of an episode one period late, a contact); the
    # lag separates the cases every time: 0 ms on every joint, 100 ms on every joint, 50 ms on 6 of 7.
    assert rmse["none"] < 0.015 and all(lag == 0 for lag in lags["none"])
    assert rmse["delay"] > 2 * rmse["none"] and np.median(lags["delay"]) == 100.0
    assert rmse["gain"] > 1.5 * rmse["none"] and np.median(lags["gain"]) > 0
