"""`pirl eval` on real LIBERO envs: a checkpoint and its exported bundle evaluated per task and pooled per suite
(episode counts, seeds -> init states, Wilson intervals, results.json / results.md, MP4s), and the refusals."""

import json

import pytest

from deploy_utils import panda_spec, tiny_policy
from pirl_robot import evaluate
from pirl_robot.bundle import export_bundle
from pirl_robot.config import compose
from pirl_robot.spec import SpecError
from sim import factory

pytestmark = pytest.mark.sim

# 6 steps at <= 1.3 cm per step cannot bring a can 20+ cm into the basket: every episode must fail.
OVERRIDES = ["env=libero_object", "env.libero.task_ids=[0,6]", "env.libero.max_episode_steps=6",
             "env.libero.settle_steps=0", "episodes=3", "num_envs=1", "progress=false"]


def test_wilson_interval():
    assert evaluate.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert evaluate.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert evaluate.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_eval_checkpoint_and_bundle_per_task_and_suite(tmp_path, capsys):
    cfg = compose("eval", OVERRIDES + ["checkpoint=unused"])
    spec = factory.env_spec(factory.eval_tasks(cfg.env)[0][1])
    ckpt = tmp_path / "ckpt"
    tiny_policy(spec).save(ckpt)
    bundle = export_bundle(ckpt, tmp_path / "bundle")
    out, videos = tmp_path / "eval", tmp_path / "videos"
    rc = evaluate.main([str(bundle), *OVERRIDES, f"output_dir={out}", f"video.dir={videos}", "video.size=32"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in res["tasks"]] == ["libero_object/0", "libero_object/6"]
    assert res["tasks"][1]["instruction"] == "pick up the butter and place it in the basket"
    for t in res["tasks"]:
        assert t["episodes"] == 3 and t["successes"] == 0 and t["seeds"] == [0, 1, 2]
        assert t["ci95"] == pytest.approx([0.0, 0.5615], abs=1e-4)
    assert res["suite"]["episodes"] == 6 and res["suite"]["success_rate"] == 0.0 and res["suite"]["tasks"] == 2
    table = (out / "results.md").read_text()
    assert "| libero_object/6 | pick up the butter" in table and "| **libero_object** (2 tasks) |" in table
    assert sorted(p.name for p in videos.iterdir()) == ["libero_object_task0_init0_seed0_fail.mp4",
                                                         "libero_object_task6_init0_seed0_fail.mp4"]
    # The checkpoint itself gives the same per-episode outcome (the bundle is the same policy).
    direct = evaluate.evaluate_policy(evaluate.load_any(ckpt), cfg.env, episodes=3, num_envs=1, log=lambda *a: 0)
    assert [t["success_by_seed"] for t in direct["tasks"]] == [t["success_by_seed"] for t in res["tasks"]]


def test_eval_refusals(tmp_path, capsys):
    assert evaluate.main([str(tmp_path), *OVERRIDES]) == 2
    assert "neither a policy checkpoint" in capsys.readouterr().err
    tiny_policy(panda_spec()).save(tmp_path / "panda")  # joint-position policy for ManiSkill's Panda
    cfg = compose("eval", OVERRIDES + [f"checkpoint={tmp_path / 'panda'}"])
    with pytest.raises(SpecError, match="action_type"):
        evaluate.evaluate_policy(evaluate.load_any(cfg.checkpoint), cfg.env, episodes=1)
