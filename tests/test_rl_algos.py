"""Advantage estimators and losses of PPO, GRPO and π-StepNFT."""

import pytest
import torch

from pirl_robot.flow import ChainConfig, sample_chain
from pirl_robot.flow.steps import time_grid
from pirl_robot.models.flow_mlp import FlowMLP, FlowMLPConfig
from pirl_robot.rl.advantages import gae, group_advantages
from pirl_robot.rl.losses import PPOConfig, ppo_policy_loss, stepnft_energies, stepnft_loss, StepNFTConfig


def test_gae_matches_hand_computation_across_an_episode_boundary():
    # One env, 3 chunks: episode ends by termination after chunk 1; chunk 2 starts a new episode.
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.5], [0.4], [0.3]])
    nv = torch.tensor([[0.4], [9.9], [0.2]])  # 9.9 must be ignored: chunk 1 terminated
    term = torch.tensor([[0.0], [1.0], [0.0]])
    done = term.clone()
    g, lam = 0.9, 0.8
    adv, ret = gae(r, v, nv, term, done, g, lam)
    d2 = 3.0 + g * 0.2 - 0.3
    d1 = 2.0 - 0.4
    d0 = 1.0 + g * 0.4 - 0.5
    torch.testing.assert_close(adv.flatten(), torch.tensor([d0 + g * lam * d1, d1, d2]))
    torch.testing.assert_close(ret, adv + v)


def test_gae_bootstraps_truncated_episodes_from_the_final_observation():
    r, v = torch.tensor([[1.0]]), torch.tensor([[0.0]])
    adv, _ = gae(r, v, torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), 0.5, 0.9)
    assert adv.item() == 1.0 + 0.5 * 2.0


def test_grpo_advantages_are_zero_mean_per_group_and_uninformative_groups_drop():
    torch.manual_seed(0)
    groups = torch.arange(6).repeat_interleave(8)
    success = torch.rand(48) < 0.5
    success[8:16] = True  # group 1: all solved -> no signal
    success[16:24] = False  # group 2: all failed -> no signal
    returns = success.float() * 2 + torch.randn(48) * 0.1
    adv, keep = group_advantages(returns, groups, success)
    assert not keep[8:24].any() and (adv[8:24] == 0).all()
    for g in (0, 3, 4, 5):
        m = groups == g
        if keep[m].any():
            assert abs(adv[m].mean().item()) < 1e-5
            assert abs(adv[m].std(unbiased=False).item() - 1.0) < 1e-3


def test_ppo_clip_and_dual_clip():
    cfg = PPOConfig(clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    lp_old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.0, 2.0, 0.5, 10.0]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, stats = ppo_policy_loss(lp, lp_old, adv, cfg)
    # per-sample: -1; -min(2, 1.2) = -1.2; -min(-0.5, -0.8) = 0.8; dual clip caps -(-10) at 3
    torch.testing.assert_close(loss, torch.tensor([-1.0, -1.2, 0.8, 3.0]).mean())
    assert stats["clip_frac"] == 0.75


def test_stepnft_lowers_the_positive_branch_energy_on_successful_samples():
    torch.manual_seed(0)
    model = FlowMLP(FlowMLPConfig(state_dim=4, action_dim=2, chunk_size=3, hidden=32, token_dim=8, obs_dim=8))
    old = FlowMLP(model.cfg)
    old.load_state_dict(model.state_dict())
    batch = {"state": torch.randn(64, 4)}
    k, cfg = 4, StepNFTConfig()
    chain = sample_chain(old, old.encode(batch), ChainConfig(num_steps=k, mode="sde", noise_level=cfg.noise_level),
                         generator=torch.Generator().manual_seed(0))
    step = torch.randint(0, k, (64,))
    rows = torch.arange(64)
    x_t, x_next, v_old = chain.xs[rows, step], chain.xs[rows, step + 1], chain.velocities[rows, step]
    t = time_grid(k)[step]
    label = torch.ones(64)  # all successful
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def energies():
        v, _ = model.velocity(model.encode(batch), x_t, t)
        e_p, e_m = stepnft_energies(v, v_old, x_t, x_next, t, 1.0 / k, cfg)
        return e_p.mean().item(), e_m.mean().item()

    before, before_minus = energies()
    assert abs(before - before_minus) < 1e-4  # identical branches before any update
    for _ in range(30):
        v, _ = model.velocity(model.encode(batch), x_t, t)
        loss, _ = stepnft_loss(v, v_old, x_t, x_next, t, 1.0 / k, label, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, after_minus = energies()
    # The branch step is bounded (||dv|| <= 0.5), so the energies move by a bounded, but clear, amount.
    assert after < before - 0.05
    assert after_minus > before_minus + 0.05


def test_sde_step_kl_is_the_expected_log_ratio_of_the_step():
    """π-StepNFT's approx_kl (what target_kl reads) is the exact KL of the stochastic step: it matches a Monte Carlo
    estimate of E_old[log p_old - log p_new] over the SDE step, and is 0 when the velocity has not moved."""
    from pirl_robot.flow.steps import gaussian_log_prob, sde_step_stats
    from pirl_robot.rl.losses import sde_step_kl

    g = torch.Generator().manual_seed(0)
    k, a, step = 4, 1.0, 3
    x_t, v_old = torch.randn(5, 3, 2, generator=g), torch.randn(5, 3, 2, generator=g)
    v_new = v_old + 0.3 * torch.randn(5, 3, 2, generator=g)
    t = time_grid(k)[torch.full((5,), step)]
    kl = sde_step_kl(v_old, v_new, x_t, t, 1.0 / k, a)
    mean_old, std = sde_step_stats(x_t, v_old, t, 1.0 / k, a)
    mean_new, _ = sde_step_stats(x_t, v_new, t, 1.0 / k, a)
    x_next = mean_old + std * torch.randn((200_000, *x_t.shape), generator=g)
    log_ratio = (gaussian_log_prob(x_next, mean_old, std) - gaussian_log_prob(x_next, mean_new, std)).sum((-1, -2))
    torch.testing.assert_close(kl, log_ratio.mean(0), rtol=0.03, atol=2e-3)
    assert (kl > 0).all()
    assert sde_step_kl(v_old, v_old, x_t, t, 1.0 / k, a).abs().max() == 0


def _ppo_on_a_known_objective(mode: str, iterations: int = 50) -> tuple[float, float]:
    """PPO through the chain likelihood on a contextual bandit: reward = -|action - target|."""
    from pirl_robot.flow import chain_log_prob

    torch.manual_seed(0)
    model = FlowMLP(FlowMLPConfig(state_dim=2, action_dim=2, chunk_size=4, hidden=64, token_dim=16, obs_dim=16))
    opt = torch.optim.AdamW(model.policy_parameters(), lr=3e-4, betas=(0.9, 0.95))
    cfg = ChainConfig(num_steps=4, mode=mode, noise_level=0.5)
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor([1.0, -1.0])

    def ode_reward() -> float:
        with torch.no_grad():
            ctx = model.encode({"state": torch.randn(512, 2, generator=gen)})
            acts = sample_chain(model, ctx, ChainConfig(num_steps=4, mode="ode"), generator=gen).actions
        return -(acts - target).abs().mean().item()

    before = ode_reward()
    for _ in range(iterations):
        state = torch.randn(256, 2, generator=gen)
        chain = sample_chain(model, model.encode({"state": state}), cfg, generator=gen)
        r = -(chain.actions - target).abs().mean((1, 2))
        adv = (r - r.mean()) / (r.std() + 1e-8)
        for idx in torch.randperm(256, generator=gen).split(64):
            sub = type(chain)(xs=chain.xs[idx], stochastic=chain.stochastic[idx], velocities=chain.velocities[idx],
                              logp=chain.logp[idx], feats_mean=chain.feats_mean[idx])
            out = chain_log_prob(model, model.encode({"state": state[idx]}), sub, cfg)
            loss, _ = ppo_policy_loss(out["logp"], chain.logp[idx], adv[idx], PPOConfig())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return before, ode_reward()


def test_flow_sde_and_flow_noise_ppo_improve_a_known_objective():
    # The whole RL path minus the simulator: sampled chains, recomputed likelihoods, clipped surrogate, and the
    # deterministic (ODE) policy that gets deployed must improve, for both πRL methods.
    for mode in ("mixed", "noise"):
        before, after = _ppo_on_a_known_objective(mode)
        assert after > before + 0.2, (mode, before, after)


# --- the algorithms' own collect-side and loss code on a real (tiny) policy, no simulator ----------------------

def _tiny_policy(seed: int = 0):
    from pirl_robot.models.factory import build_model
    from pirl_robot.policy import Policy
    from pirl_robot.spec import PolicySpec
    from pirl_robot.transforms import PolicyTransforms, Stats

    spec = PolicySpec(state_names=("j0", "j1", "obj_x", "obj_y"), action_names=("j0", "j1", "gripper"),
                      action_state_index=(0, 1, -1), chunk_size=4, exec_horizon=4)
    torch.manual_seed(seed)
    model = build_model("flow_mlp", {"hidden": 32, "token_dim": 8, "obs_dim": 16}, spec)
    stats = PolicyTransforms(spec, Stats(torch.zeros(4), torch.ones(4)), Stats(torch.zeros(3), torch.ones(3)))
    return Policy(spec=spec, model=model.eval(), transforms=stats)


def _episode_rollout(policy, states: torch.Tensor, chunks: int, cfg: ChainConfig, seed: int = 0):
    """Rows of `chunks` chunk decisions of len(states) episodes (episode i starts from states[i]), sampled by the
    rollout path (rollout.act) and stacked as collect_episodes does: chunk-major, env_of_row set."""
    from pirl_robot.rl.rollout import Rollout, _stack, act

    gen = torch.Generator().manual_seed(seed)
    n = states.shape[0]
    records = [act(policy, {"state": states + 0.1 * c}, cfg, gen)[0] for c in range(chunks)]
    s = _stack(records)
    m = s["logp"].shape[0]
    zeros = torch.zeros(m)
    return Rollout(**s, advantages=zeros, returns=zeros.clone(), labels=zeros.clone(),
                   env_of_row=torch.arange(n).repeat(chunks))


def _grad(policy, loss) -> torch.Tensor:
    params = list(policy.model.policy_parameters())  # the noise net's are unused by Flow-SDE chains
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def test_grpo_dropped_groups_carry_no_gradient_and_enter_no_normalisation():
    from pirl_robot.rl.algorithms import SKIPPED, AlgoConfig, GRPO

    policy = _tiny_policy()
    chain = ChainConfig(num_steps=4, mode="mixed", noise_level=1.0, first_stochastic_step=3)
    cfg = AlgoConfig(kind="grpo", chain=chain, group_size=4, group_reward="success")
    # three groups of 4 episodes: 2/4 solved (kept), 4/4 solved (dropped: no signal), 1/4 solved (kept)
    succ = [True, False, False, True] + [True] * 4 + [True, False, False, False]
    states = torch.randn(4, 4).repeat_interleave(4, 0)[:12]  # a group shares its initial state
    stats = [{"success": s, "return": float(i)} for i, s in enumerate(succ)]
    full = GRPO(cfg).informative(_episode_rollout(policy, states, 3, chain), stats)
    assert len(full) == 8 * 3 and set(full.env_of_row.tolist()) == {0, 1, 2, 3, 8, 9, 10, 11}
    # the same kept episodes (same chains: the sampler draws in the same order) without the dropped group
    rows = _episode_rollout(policy, states, 3, chain)
    without = rows.select(~torch.isin(rows.env_of_row, torch.arange(4, 8)))
    without.env_of_row = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7] * 3)
    alone = GRPO(cfg).informative(without, stats[:4] + stats[8:])
    torch.testing.assert_close(full.advantages, alone.advantages)
    # the kept groups' advantages are their own z-scores: 2/4 -> +-1; 1/4 -> +sqrt(3), -1/sqrt(3)
    torch.testing.assert_close(full.advantages[:8], torch.tensor([1.0, -1, -1, 1, 3**0.5, -(3**-0.5), -(3**-0.5),
                                                                  -(3**-0.5)]), atol=1e-4, rtol=0)
    algo = GRPO(cfg)
    idx = torch.arange(len(full))
    loss_full, _ = algo.loss(policy, full, idx)
    loss_alone, _ = algo.loss(policy, alone, idx)
    g_full, g_alone = _grad(policy, loss_full), _grad(policy, loss_alone)
    torch.testing.assert_close(g_full, g_alone)
    assert g_full.abs().sum() > 0
    # no informative group at all: nothing to learn, the minibatch is skipped
    none = GRPO(cfg).informative(_episode_rollout(policy, states, 3, chain), [{"success": True, "return": 0.0}] * 12)
    assert len(none) == 36 and not none.keep.any()
    assert GRPO(cfg).loss(policy, none, torch.arange(36))[1][SKIPPED]


def test_stepnft_trains_only_the_stochastic_steps_it_rolled_out():
    from pirl_robot.rl.algorithms import StepNFT

    policy = _tiny_policy()
    gen = torch.Generator().manual_seed(0)
    last = _episode_rollout(policy, torch.randn(16, 4), 2, ChainConfig(mode="sde", noise_level=1.0,
                                                                      first_stochastic_step=3))
    assert (StepNFT.training_steps(last, gen) == 3).all()  # the earlier steps were ODE steps
    every = _episode_rollout(policy, torch.randn(64, 4), 2, ChainConfig(mode="sde", noise_level=0.2))
    assert set(StepNFT.training_steps(every, gen).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("centre_labels", [False, True])
def test_stepnft_update_lowers_the_positive_branch_on_success_and_the_negative_on_failure(centre_labels):
    from pirl_robot.flow.steps import time_grid
    from pirl_robot.rl.algorithms import AlgoConfig, StepNFT

    policy = _tiny_policy()
    k, a = 4, 1.0
    cfg = AlgoConfig(kind="stepnft", chain=ChainConfig(num_steps=k, mode="sde", noise_level=a, first_stochastic_step=3),
                     stepnft=StepNFTConfig(noise_level=a, centre_labels=centre_labels))
    rollout = _episode_rollout(policy, torch.randn(32, 4), 2, cfg.chain)
    success = torch.rand(32, generator=torch.Generator().manual_seed(1)) < 0.3
    rollout.labels = StepNFT(cfg).ranking_labels(torch.where(success, 1.0, -1.0)[rollout.env_of_row])
    rollout.step = StepNFT.training_steps(rollout, torch.Generator().manual_seed(0))
    rows = torch.arange(len(rollout))
    x_t, x_next = rollout.xs[rows, rollout.step], rollout.xs[rows, rollout.step + 1]
    t, v_old = time_grid(k)[rollout.step], rollout.velocities[rows, rollout.step]

    def energies():
        with torch.no_grad():
            v, _ = policy.model.velocity(policy.encode(rollout.batch(rows)), x_t, t)
            return stepnft_energies(v, v_old, x_t, x_next, t, 1.0 / k, cfg.stepnft)

    e_plus, e_minus = energies()
    torch.testing.assert_close(e_plus, e_minus)  # the rollout policy itself: both branches are v_old
    algo = StepNFT(cfg)
    opt = torch.optim.AdamW(policy.model.policy_parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
    loss, stats = algo.loss(policy, rollout, rows)
    assert stats["rank_loss"] > 0
    opt.zero_grad()
    loss.backward()
    opt.step()  # one real optimizer step on every row
    after_plus, after_minus = energies()
    pos, neg = rollout.labels > 0, rollout.labels < 0
    # successful transitions: the + branch explains them better; failed ones: the - branch does (first-order
    # moves of one Adam step: small, but of a definite sign)
    assert after_plus[pos].mean() < e_plus[pos].mean()
    assert after_minus[neg].mean() < e_minus[neg].mean()
    assert after_minus[pos].mean() > e_minus[pos].mean() and after_plus[neg].mean() > e_plus[neg].mean()
    assert algo.loss(policy, rollout, rows)[0] < loss


def test_stepnft_centred_labels_sum_to_zero_and_leave_no_gradient_without_contrast():
    """Centring subtracts a constant: rows keep their order, and a rollout where every episode failed carries no
    signal (each row's gradient at v_theta = v_old is its label times zero-mean SDE noise), so it moves nothing."""
    from pirl_robot.rl.algorithms import AlgoConfig, StepNFT

    def algo(centre):
        return StepNFT(AlgoConfig(kind="stepnft", chain=ChainConfig(mode="sde", noise_level=1.0, first_stochastic_step=3),
                                  stepnft=StepNFTConfig(noise_level=1.0, centre_labels=centre)))

    y = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0])
    centred = algo(True).ranking_labels(y)
    assert abs(centred.sum().item()) < 1e-6 and centred[0] > 0 > centred[1]
    torch.testing.assert_close(centred, torch.tensor([1.6, -0.4, -0.4, -0.4, -0.4]))
    assert torch.equal(algo(False).ranking_labels(y), y)

    policy = _tiny_policy()
    rollout = _episode_rollout(policy, torch.randn(16, 4), 2, algo(True).cfg.chain)
    rows = torch.arange(len(rollout))
    rollout.step = StepNFT.training_steps(rollout, torch.Generator().manual_seed(0))
    grads = {}
    for centre in (False, True):
        a = algo(centre)
        rollout.labels = a.ranking_labels(-torch.ones(len(rollout)))  # every episode failed
        policy.model.zero_grad()
        a.loss(policy, rollout, rows)[0].backward()
        grads[centre] = torch.cat([p.grad.flatten() for p in policy.model.policy_parameters() if p.grad is not None])
    assert grads[False].abs().sum() > 0  # +/-1: the failures alone push along their own noise
    assert grads[True].abs().max() < 1e-6


def test_velocity_drift_is_zero_for_the_start_itself_and_grows_with_a_change_at_one_step():
    """bench/velocity_drift.py: no change of a policy against itself; a velocity change added at one denoising
    time only shows at that step (the chain's earlier points are the SFT chain's own)."""
    from bench_utils import load_bench

    drift = load_bench("velocity_drift")

    start, tuned = _tiny_policy(), _tiny_policy()
    states = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    per_step, actions = drift.velocity_drift(start, tuned, states)
    assert per_step == [0.0] * 4 and actions == 0.0

    velocity = tuned.model.velocity

    def moved_at_last_step(ctx, x, t):  # adds 0.5 to the velocity at the last step (t = 0.25) only
        v, feats = velocity(ctx, x, t)
        return v + 0.5 * (t[0] < 0.3).float(), feats

    tuned.model.velocity = moved_at_last_step
    per_step, actions = drift.velocity_drift(start, tuned, states)
    assert per_step[:3] == [0.0] * 3 and per_step[3] > 0
    assert abs(actions - 0.25 * 0.5) < 1e-5  # d * the added velocity, in every action entry


def test_stepnft_label_forms_are_checked():
    from pirl_robot.rl.algorithms import AlgoConfig

    chain = ChainConfig(mode="sde", noise_level=1.0, first_stochastic_step=3)
    with pytest.raises(ValueError, match="stepnft.labels"):
        AlgoConfig(kind="stepnft", chain=chain, stepnft=StepNFTConfig(noise_level=1.0, labels="return"))
    with pytest.raises(ValueError, match="centred per group"):
        AlgoConfig(kind="stepnft", chain=chain, stepnft=StepNFTConfig(noise_level=1.0, labels="group", centre_labels=True))


def test_stepnft_group_labels_skip_a_round_without_an_informative_group():
    """Every group solved alike: group labels are all 0 and the minibatch is skipped (no optimizer step, so no
    drift from Adam's momentum or weight decay); with an informative group the same rows train."""
    from pirl_robot.rl.algorithms import SKIPPED, AlgoConfig, StepNFT, group_relative

    cfg = AlgoConfig(kind="stepnft", chain=ChainConfig(mode="sde", noise_level=1.0, first_stochastic_step=3),
                     stepnft=StepNFTConfig(noise_level=1.0, labels="group"), group_size=4, group_reward="success")
    policy = _tiny_policy()
    states = torch.randn(2, 4).repeat_interleave(4, 0)
    for succ, informative in (([True] * 8, False), ([True, False, False, False] + [True] * 4, True)):
        rollout = group_relative(_episode_rollout(policy, states, 2, cfg.chain),
                                 [{"success": s, "return": 0.0} for s in succ], cfg)
        rollout.labels = rollout.advantages
        rollout.step = StepNFT.training_steps(rollout, torch.Generator().manual_seed(0))
        loss, stats = StepNFT(cfg).loss(policy, rollout, torch.arange(len(rollout)))
        assert stats.get(SKIPPED, False) is (not informative)
        assert len(rollout) == (8 if informative else 16)  # the kept group's 4 episodes x 2 chunks, or all rows
