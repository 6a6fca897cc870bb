"""`pirl train env=libero_object` end to end on real LIBERO envs (slow): expert demos, SFT, GRPO iterations with
equal-seed groups, evaluation, checkpoints and the summary."""

import json

import pytest

from pirl_robot.config import compose
from pirl_robot.train import run

pytestmark = [pytest.mark.sim, pytest.mark.slow]


def test_pirl_train_on_a_libero_task(tmp_path):
    cfg = compose("train", [
        "env=libero_object", "algo=grpo", "algo.group_size=2", "env.num_envs=2", "env.num_workers=1",
        "env.libero.max_episode_steps=130", "demos.episodes=2", f"demos.root={tmp_path}/demos", "sft.steps=40",
        "rl.iterations=2", "eval.episodes=2", "eval.every=0", "save_every=1", f"output_dir={tmp_path}/run",
        "progress=false"])
    summary = run(cfg)
    assert summary["task"] == "libero_object" and summary["iterations"] == 2
    assert summary["sft_episodes"] == 2 and summary["rl_episodes"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert len(train) == 2 and all(r["episodes"] == 2 and r["env_steps"] > 0 for r in train)
    assert (tmp_path / "run" / "checkpoints" / "last" / "policy.json").exists()
    spec = json.loads((tmp_path / "run" / "checkpoints" / "last" / "policy.json").read_text())["spec"]
    assert spec["action_type"] == "ee_delta_pose" and spec["instruction"].startswith("pick up the alphabet soup")
