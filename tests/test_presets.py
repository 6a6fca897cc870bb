"""Every experiment preset (configs/experiment/*.yaml) composes into a valid run configuration."""

from pathlib import Path

import pytest
import torch

from pirl_robot.config import compose
from pirl_robot.flow.steps import sde_step_stats, time_grid
from pirl_robot.train import algo_config

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))
WEAK_START = ("pushcube_2demos", "pushcube_grpo", "pushcube_stepnft")  # issue 14's algorithms from one start


def test_the_presets_are_found():
    assert set(WEAK_START) <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_into_a_valid_run(name):
    cfg = compose("train", [f"+experiment={name}", "seed=3"])
    a = algo_config(cfg)  # every algo key known and every value valid (AlgoConfig / ChainConfig checks)
    assert cfg.algo.kind == a.kind and cfg.rl.iterations > 0
    # issue 14's evaluations: >= 96 fixed PushCube seeds; LIBERO: all 50 standard init states of each task
    assert cfg.eval.episodes >= (50 * len(cfg.env.libero.task_ids) if cfg.env.simulator == "libero" else 96)
    assert cfg.output_dir.startswith("outputs/") and "_s3" in cfg.output_dir
    if a.kind == "grpo":
        assert cfg.env.num_envs % a.group_size == 0  # whole groups per iteration
    if a.kind == "stepnft":
        assert a.stepnft.noise_level == a.chain.noise_level


def start_of(cfg):
    """What makes two runs start from the same SFT policy and score on the same evaluation."""
    return cfg.demos, cfg.sft, cfg.eval.episodes, cfg.env.maniskill


def test_the_weak_start_presets_share_the_start_and_explore_at_the_last_step():
    cfgs = {n: compose("train", [f"+experiment={n}"]) for n in WEAK_START}
    assert all(start_of(c) == start_of(cfgs["pushcube_2demos"]) for c in cfgs.values())
    assert cfgs["pushcube_2demos"].demos.episodes == 2
    assert [algo_config(cfgs[n]).kind for n in WEAK_START] == ["ppo", "grpo", "stepnft"]
    for n in WEAK_START:
        chain = algo_config(cfgs[n]).chain
        assert (chain.num_steps, chain.first_stochastic_step, chain.noise_level) == (4, 3, 1.0), n
    grpo = algo_config(cfgs["pushcube_grpo"])  # the measured form: shaped returns, every group kept
    assert (grpo.group_reward, grpo.min_group_success, grpo.max_group_success) == ("return", 0.0, 1.0)
    assert (grpo.actor_lr, grpo.lr_schedule, grpo.target_kl) == (3e-4, "linear", 0.1)  # session 13's KL stop
    stepnft = algo_config(cfgs["pushcube_stepnft"])  # the measured form: a 3e-4 step decaying to 0
    assert (stepnft.actor_lr, stepnft.lr_schedule) == (3e-4, "linear")


def test_the_flow_noise_preset_explores_where_and_as_much_as_flow_sde():
    noise, sde = (compose("train", [f"+experiment={n}"]) for n in ("pushcube_flow_noise", "pushcube_2demos"))
    assert start_of(noise) == start_of(sde)
    a, b = algo_config(noise), algo_config(sde)
    assert (a.kind, a.chain.mode, b.kind) == ("ppo", "noise", "ppo")
    assert a.chain.first_stochastic_step == b.chain.first_stochastic_step == a.chain.num_steps - 1
    k = b.chain.num_steps  # Flow-SDE's std at its one stochastic (last) step
    t = time_grid(k)[k - 1 : k]
    _, std = sde_step_stats(torch.zeros(1, 1), torch.zeros(1, 1), t, 1.0 / k, b.chain.noise_level)
    lo, hi = noise.policy.model.noise_std_min, noise.policy.model.noise_std_max
    assert lo < float(std) < hi and abs((lo * hi) ** 0.5 - float(std)) < 0.01  # the band's middle (tanh(0))


LIBERO = {"libero_object_stepnft": "stepnft", "libero_object_ppo": "ppo"}


@pytest.mark.parametrize("name", LIBERO)
def test_the_libero_presets_train_one_libero_object_task_from_object_states(name):
    cfg = compose("train", [f"+experiment={name}"])
    assert (cfg.env.simulator, cfg.env.libero.suite, list(cfg.env.libero.task_ids)) == ("libero", "libero_object", [0])
    assert cfg.env.libero.obs_mode == "state" and cfg.policy.kind == "flow_mlp"  # CPU: no rendering
    assert cfg.eval.episodes == 50  # every standard init state of the task once
    a = algo_config(cfg)
    assert a.kind == LIBERO[name] and a.chain.first_stochastic_step == 3
    assert a.chain.noise_level < 1.0  # PushCube's a = 1.0 failed every LIBERO rollout of a 66% SFT policy
    assert a.actor_lr <= 1e-5  # 5e-5 turned a 56% policy into 0/8 rollouts after one update


def test_the_libero_presets_share_one_start():
    starts = [(c.demos, c.sft, c.env.libero) for c in (compose("train", [f"+experiment={n}"]) for n in LIBERO)]
    assert all(s == starts[0] for s in starts)


@pytest.mark.parametrize("algo", ["flow_sde_ppo", "flow_noise_ppo", "grpo"])
def test_the_ratio_algorithms_take_a_kl_stop_as_a_plain_override(algo):
    """target_kl is in each ratio-clipped algorithm's yaml (off), so `algo.target_kl=0.1` needs no '+'."""
    assert algo_config(compose("train", [f"algo={algo}"])).target_kl is None
    assert algo_config(compose("train", [f"algo={algo}", "algo.target_kl=0.1"])).target_kl == 0.1
