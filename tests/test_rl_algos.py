"""Advantage estimators and losses of PPO, GRPO and π-StepNFT."""

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
