"""Simulated evaluation logs the deploy view's Rerun layout: `evaluate_policy` (what `pirl eval` runs) on the
ManiSkill chunk env with the RerunEvalObserver writes one .rrd per episode with the same entities as a recorded
real episode, and the outcome; `pirl eval ... rerun.dir=` turns it on."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_record_hil import rrd_rows  # noqa: E402

pytestmark = pytest.mark.sim
ROOT = Path(__file__).resolve().parents[1]


def test_pirl_eval_writes_the_deploy_layout(tmp_path):
    from deploy_utils import tiny_policy
    from pirl_robot.evaluate import main
    from pirl_robot.record.rerun_log import LATENCIES
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.env import task_spec

    tiny_policy(task_spec(TaskConfig(task="PushCube-v1"))).save(tmp_path / "ckpt")
    rrd = tmp_path / "rrd"
    assert main([str(tmp_path / "ckpt"), "env=maniskill_pushcube", "env.maniskill.max_episode_steps=12",
                 "env.num_workers=1", "episodes=3", "num_envs=2", f"rerun.dir={rrd}", "rerun.episodes=null",
                 f"output_dir={tmp_path / 'out'}", "progress=false"]) == 0
    import json

    assert json.loads((tmp_path / "out" / "results.json").read_text())["sampler"]["mode"] == "ode"  # the default
    files = sorted(rrd.glob("*/*.rrd"))
    assert [p.name for p in files] == ["seed_000000.rrd", "seed_000001.rrd", "seed_000002.rrd"]
    for path in files:
        rows = rrd_rows(path)
        assert rows["/joints/panda_joint1/policy"] == rows["/joints/panda_joint1/applied"] == 12
        assert rows["/sim/reward"] == 12 and rows["/plan"] == 2  # 12 steps, chunks of 8
        assert rows["/joints/panda_joint1/measured"] == 2  # the observation at each chunk's start
        assert rows["/safety/events"] == 1  # the outcome
    # the same entity names as a recorded deploy episode (minus what only a robot has: latencies)
    from rerun.chunk import RrdReader

    names = set(RrdReader(files[0]).store().schema().entity_paths())
    assert {"/plan", "/safety/events", "/episode/info", "/joints/gripper/policy"} <= names
    assert not {f"/latency/{k}" for k in LATENCIES} & {n for n, r in rows.items() if r}
