"""The RL loop on a real ManiSkill env: every algorithm runs seeded without diverging; `pirl train` resumes."""

import json
import math
from dataclasses import replace

import pytest
import torch

from pirl_robot.flow.sampler import ChainConfig
from pirl_robot.models.factory import build_model
from pirl_robot.policy import Policy
from pirl_robot.rl.algorithms import AlgoConfig
from pirl_robot.rl.losses import PPOConfig, StepNFTConfig
from pirl_robot.rl.trainer import Trainer
from pirl_robot.train import main as train_main
from pirl_robot.transforms import PolicyTransforms

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pirl_robot.data.demos import compute_stats, load_demos
    from sim.maniskill.config import TaskConfig
    from sim.maniskill.demos import record_demos
    from sim.maniskill.env import task_spec
    from sim.maniskill.vector import ChunkVectorEnv

    cfg = TaskConfig(task="PushCube-v1")
    spec = task_spec(cfg)
    root = tmp_path_factory.mktemp("demos") / "pushcube"
    record_demos(cfg, 2, root, seed=0, log=lambda *a: None)
    stats = compute_stats(load_demos(root, spec.chunk_size, spec), spec)
    env = ChunkVectorEnv(cfg, num_envs=4, seed=0)
    yield spec, stats, env
    env.close()


def tiny_policy(spec, stats, hidden=32):
    """The flow MLP at test width, normalised with the demos' statistics."""
    model = build_model("flow_mlp", {"hidden": hidden, "token_dim": hidden // 4, "obs_dim": hidden // 2}, spec)
    return Policy(spec, model, PolicyTransforms(spec, stats["state"], stats["actions"]))


ALGOS = {
    "flow_sde_ppo": AlgoConfig(kind="ppo", chain=ChainConfig(mode="mixed"), chunks_per_env=4, minibatch_size=8),
    "flow_noise_ppo": AlgoConfig(kind="ppo", chain=ChainConfig(mode="noise"), chunks_per_env=4, minibatch_size=8,
                                 ppo=PPOConfig(entropy_coef=0.005)),
    "grpo": AlgoConfig(kind="grpo", chain=ChainConfig(mode="mixed"), group_size=2, minibatch_size=8,
                       min_group_success=0.0, max_group_success=1.0),
    "stepnft": AlgoConfig(kind="stepnft", chain=ChainConfig(mode="sde", noise_level=0.2), minibatch_size=8),
    "stepnft_group": AlgoConfig(kind="stepnft", chain=ChainConfig(mode="sde", noise_level=0.2), minibatch_size=8,
                                stepnft=StepNFTConfig(noise_level=0.2, labels="group"), group_size=2,
                                group_reward="return", min_group_success=0.0, max_group_success=1.0),
}


def test_stepnft_group_labels_are_each_episodes_advantage_within_its_group(setup):
    """stepnft.labels=group: pairs of envs start from one seeded state and each episode's label is its GRPO
    advantage; in a group of two with different returns that is exactly +1 for the better episode, -1 for the
    other, on every row (chunk) of the episode."""
    from pirl_robot.rl.algorithms import CollectContext, StepNFT

    spec, stats, env = setup
    torch.manual_seed(0)
    policy = tiny_policy(spec, stats)
    seeds = iter(range(100, 200))
    ctx = CollectContext(policy, env, torch.Generator().manual_seed(0), lambda n: [next(seeds) for _ in range(n)], 8)
    rollout = StepNFT(ALGOS["stepnft_group"]).collect(ctx)
    assert rollout.keep.all()  # shaped returns, no success band: every group with a spread is informative
    for e in range(env.num_envs):
        labels = rollout.labels[rollout.env_of_row == e]
        assert len(labels) > 0 and (labels == labels[0]).all()
    first = {e: rollout.labels[rollout.env_of_row == e][0].item() for e in range(env.num_envs)}
    for a, b in ((0, 1), (2, 3)):
        assert sorted([first[a], first[b]]) == pytest.approx([-1.0, 1.0], abs=1e-5)  # (eps in the std)


@pytest.mark.parametrize("name", list(ALGOS))
def test_short_seeded_run_does_not_diverge(setup, tmp_path, name):
    spec, stats, env = setup
    torch.manual_seed(0)
    policy = tiny_policy(spec, stats, hidden=64)
    model = policy.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(policy, env, ALGOS[name], tmp_path, seed=0, max_chunks=8, eval_every=0, save_every=0,
                      progress=False)
    history = trainer.train(3)
    assert len(history) == 3 and trainer.env_steps > 0
    for row in history:
        if ALGOS[name].kind == "ppo":  # the actor's and the critic's pre-clip norms make up the clipped total
            assert row["grad_norm_critic"] > 0 and row["grad_norm_actor"] > 0
            assert math.isclose(math.hypot(row["grad_norm_actor"], row["grad_norm_critic"]), row["grad_norm"],
                                rel_tol=0.35)  # (means over steps: equal per step, close on average)
        for key in ("loss", "grad_norm", "grad_norm_actor", "value_loss", "policy_loss", "mean_return"):
            if key in row and (key != "mean_return" or row["episodes"]):  # no episode ended: NaN by design
                assert math.isfinite(row[key]), (key, row)
        if "ratio_mean" in row:  # PPO, GRPO
            assert row["approx_kl"] < 0.5 and 0.5 < row["ratio_mean"] < 2.0
        elif "approx_kl" in row:  # π-StepNFT: the exact KL of its trained step
            assert math.isfinite(row["approx_kl"]) and row["approx_kl"] >= 0
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    moved = sum((after[k] - before[k]).abs().sum().item() for k in before)
    assert moved > 0, "the update changed nothing"
    # Saved checkpoints load strictly and act.
    loaded = Policy.load(tmp_path / "checkpoints" / "last")
    out = loaded.infer({"state": env.reset(seeds=[1, 1, 2, 2])["state"][0]})
    assert out["actions"].shape == (spec.chunk_size, spec.action_dim)


def test_linear_lr_schedule_falls_to_zero_at_the_last_iteration(setup, tmp_path):
    spec, stats, env = setup
    policy = tiny_policy(spec, stats)
    algo = replace(ALGOS["flow_sde_ppo"], lr_schedule="linear", actor_lr=3e-4, critic_lr=1e-3)
    trainer = Trainer(policy, env, algo, tmp_path, max_chunks=8, eval_every=0, save_every=0, progress=False)
    history = trainer.train(3)
    assert [r["lr_frac"] for r in history] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([1e-4, 1e-3 / 3])
    with pytest.raises(ValueError, match="lr_schedule"):
        replace(algo, lr_schedule="cosine")


@pytest.mark.parametrize("name", ["flow_sde_ppo", "stepnft"])
def test_target_kl_ends_the_update_early(setup, tmp_path, name):
    """A KL stop (cleanrl / SB3's target_kl) cuts the epoch loop: fewer optimizer steps than epochs x minibatches.
    PPO reads its ratio's approx KL; π-StepNFT the exact KL of its trained SDE step."""
    spec, stats, env = setup

    def optimizer_steps(target_kl):
        torch.manual_seed(0)
        policy = tiny_policy(spec, stats)
        algo = replace(ALGOS[name], actor_lr=1e-2, target_kl=target_kl, update_epochs=4)  # >= 2 minibatches of 8
        trainer = Trainer(policy, env, algo, tmp_path, seed=0, max_chunks=8, eval_every=0, save_every=0,
                          progress=False)
        trainer.train(1)
        return max(int(st["step"]) for st in trainer.optimizer.state.values())

    full = optimizer_steps(None)
    if name == "flow_sde_ppo":
        assert full == 4 * 2  # update_epochs x minibatches (16 rows)
    else:  # its episodes' chunks: at least 2 minibatches, every one in every epoch
        assert full >= 4 * 2 and full % 4 == 0
    assert 1 <= optimizer_steps(1e-6) < full


def test_pirl_train_writes_outputs_and_resumes(tmp_path, capsys):
    args = [f"output_dir={tmp_path}/run", f"demos.root={tmp_path}/demos", "demos.episodes=2", "env.num_envs=2",
            "sft.steps=10", "eval.episodes=2", "eval.every=0", "save_every=1", "progress=false",
            "policy.model.hidden=32"]
    assert train_main(args + ["rl.iterations=1"]) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["sft_episodes"] == 2
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert (run / "checkpoints" / "sft" / "model.safetensors").exists()
    # Interrupted runs pick up where they stopped: ask for 2 iterations, only the second one is trained.
    assert train_main(args + ["rl.iterations=2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["iterations"] == 2
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert sum(r.get("tag") == "sft" for r in rows) == 1
    finals = [r for r in rows if r.get("tag") == "final"]
    assert [r["iteration"] for r in finals] == [1, 2] and not any("same_as" in r for r in finals)
    # Nothing left to train: the weights are the ones just scored, so the final row repeats that result.
    assert train_main(args + ["rl.iterations=2"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    again = rows[-1]
    assert again["tag"] == "final" and again["same_as"] == "final" and again["iteration"] == 2
    assert again["successes"] == finals[-1]["successes"] and again["episodes"] == 2


def test_pirl_train_without_rl_iterations_scores_the_sft_policy_once(tmp_path):
    args = [f"output_dir={tmp_path}/run", f"demos.root={tmp_path}/demos", "demos.episodes=2", "env.num_envs=2",
            "sft.steps=10", "eval.episodes=2", "progress=false", "policy.model.hidden=32", "rl.iterations=0"]
    assert train_main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["tag"], r.get("same_as")) for r in rows] == [("sft", None), ("final", "sft")]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["gain_points"] == 0 and summary["rl_success"] == rows[0]["success_rate"]


def test_the_measured_experiment_preset_composes_into_a_valid_run():
    from pirl_robot.config import compose
    from pirl_robot.train import algo_config

    for algo in ("flow_sde_ppo", "flow_noise_ppo"):
        cfg = compose("train", ["+experiment=pushcube_2demos", f"algo={algo}", "seed=1"])
        a = algo_config(cfg)
        assert (cfg.demos.episodes, a.chain.first_stochastic_step, a.chain.num_steps) == (2, 3, 4)
        assert cfg.output_dir == f"outputs/pushcube_2demos_{algo}_s1" and cfg.demos.state_min_std == 0.05


def test_malformed_config_is_a_clear_error(capsys):
    assert train_main(["algo.chain.mode=bogus", "progress=false"]) == 2
    assert "chain mode 'bogus'" in capsys.readouterr().err
    assert train_main(["algo.not_a_key=1"]) == 2


def test_grpo_groups_start_identically_and_can_share_chain_noise(setup):
    from pirl_robot.rl.rollout import collect_episodes

    spec, stats, env = setup
    torch.manual_seed(0)
    policy = tiny_policy(spec, stats)
    rollout, episodes = collect_episodes(policy, env, [7, 7, 9, 9], ChainConfig(mode="mixed"),
                                         torch.Generator().manual_seed(0), max_chunks=8, shared_noise_groups=2)
    first = rollout.raw["state"][:4]  # rows of the first chunk, in env order
    assert torch.equal(first[0], first[1]) and torch.equal(first[2], first[3]) and not torch.equal(first[0], first[2])
    x1 = rollout.xs[:4, 0]
    assert torch.equal(x1[0], x1[1]) and torch.equal(x1[2], x1[3]) and not torch.equal(x1[0], x1[2])
    assert [e["seed"] for e in episodes] == [7, 7, 9, 9]
