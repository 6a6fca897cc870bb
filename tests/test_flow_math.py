"""The denoising samplers against exact answers: SDE marginals, chain likelihoods, first-epoch PPO ratios."""

import math

import pytest
import torch

from analytic_flow import GaussianFlow
from pirl_robot.flow import ChainConfig, chain_log_prob, sample_chain
from pirl_robot.flow.steps import sde_step_stats, time_grid
from pirl_robot.models.flow_mlp import FlowMLP, FlowMLPConfig


def _samples(mode: str, k: int, n: int = 40000, seed: int = 0, a: float = 0.5) -> torch.Tensor:
    model = GaussianFlow()
    g = torch.Generator().manual_seed(seed)
    chain = sample_chain(model, model.encode({"n": n}), ChainConfig(num_steps=k, mode=mode, noise_level=a),
                         generator=g)
    return chain.actions.flatten()


def test_flow_sde_preserves_ode_marginals_on_exact_gaussian_flow():
    # Fine grid: the Euler-Maruyama SDE must land on the data marginal N(1.5, 0.3^2).
    x = _samples("sde", k=200)
    se_mean, se_std = 0.3 / math.sqrt(x.numel()), 0.3 / math.sqrt(2 * x.numel())
    assert abs(x.mean().item() - 1.5) < 5 * se_mean + 0.005
    assert abs(x.std().item() - 0.3) < 5 * se_std + 0.006
    # And the noise really is injected: the SDE is not the ODE in disguise.
    ode = _samples("ode", k=200)
    assert not torch.allclose(x[:100], ode[:100])


def test_flow_sde_matches_ode_at_the_same_coarse_grid():
    # At K = 50 both are close to the target but carry Euler error; they must agree with each other.
    sde, ode = _samples("sde", k=50), _samples("ode", k=50)
    assert abs(sde.std().item() - ode.std().item()) < 0.015
    assert abs(sde.mean().item() - ode.mean().item()) < 0.01


def test_dropping_the_score_correction_breaks_the_marginal():
    # Guards the test itself: a step without the correction term would spread samples far too wide.
    model, k, n, a = GaussianFlow(), 200, 20000, 0.5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 1, generator=g)
    grid, d = time_grid(k), 1.0 / k
    for i in range(k):
        t = grid[i].expand(n)
        v, _ = model.velocity(None, x, t)
        _, std = sde_step_stats(x, v, t, d, a)
        x = x - d * v + std * torch.randn(x.shape, generator=g)
    assert x.std().item() > 0.4


def _tiny_mlp(seed: int = 0) -> FlowMLP:
    torch.manual_seed(seed)
    return FlowMLP(FlowMLPConfig(state_dim=5, action_dim=3, chunk_size=4, hidden=32, token_dim=16, obs_dim=16))


def test_flow_noise_chain_log_likelihood_equals_direct_gaussian_density():
    model = _tiny_mlp()
    ctx = model.encode({"state": torch.randn(6, 5)})
    cfg = ChainConfig(num_steps=5, mode="noise", reduction="sum")
    chain = sample_chain(model, ctx, cfg, generator=torch.Generator().manual_seed(3))
    ours = chain_log_prob(model, ctx, chain, cfg, include_prior=True)["logp"]
    # Direct: each step is a diagonal multivariate normal over the flattened chunk; the start is N(0, I).
    dim = model.chunk_size * model.action_dim
    direct = torch.distributions.MultivariateNormal(torch.zeros(dim), torch.eye(dim)).log_prob(chain.xs[:, 0].flatten(1))
    grid, d = time_grid(5), 0.2
    with torch.no_grad():
        for k in range(5):
            x = chain.xs[:, k]
            v, feats = model.velocity(ctx, x, grid[k].expand(6))
            std = model.noise_std(feats, grid[k].expand(6))
            mvn = torch.distributions.MultivariateNormal((x - d * v).flatten(1), torch.diag_embed(std.flatten(1) ** 2))
            direct = direct + mvn.log_prob(chain.xs[:, k + 1].flatten(1))
    torch.testing.assert_close(ours.detach(), direct, rtol=1e-5, atol=1e-3)
    # The noise net's std stays inside its band.
    _, feats = model.velocity(ctx, chain.xs[:, 0], torch.ones(6))
    std = model.noise_std(feats, torch.ones(6))
    assert std.min() >= 0.08 - 1e-6 and std.max() <= 0.16 + 1e-6


@pytest.mark.parametrize("mode", ["mixed", "sde", "noise"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ppo_ratio_is_one_on_the_first_epoch(mode, reduction):
    model = _tiny_mlp(1)
    batch = {"state": torch.randn(16, 5)}
    cfg = ChainConfig(num_steps=4, mode=mode, reduction=reduction)
    chain = sample_chain(model, model.encode(batch), cfg, generator=torch.Generator().manual_seed(0))
    new = chain_log_prob(model, model.encode(batch), chain, cfg)["logp"]
    ratio = (new - chain.logp).exp()
    torch.testing.assert_close(ratio.detach(), torch.ones(16), rtol=0, atol=1e-4)
    # And the recomputed log-prob carries gradient into the velocity field.
    new.sum().backward()
    assert model.action_out_proj.weight.grad.abs().sum() > 0


def test_mixed_mode_has_exactly_one_stochastic_step_per_chunk():
    model = _tiny_mlp()
    ctx = model.encode({"state": torch.randn(50, 5)})
    chain = sample_chain(model, ctx, ChainConfig(num_steps=4, mode="mixed", mixed_exclude_last=True),
                         generator=torch.Generator().manual_seed(0))
    assert (chain.stochastic.sum(-1) == 1).all()
    assert not chain.stochastic[:, -1].any()


def test_first_stochastic_step_keeps_earlier_steps_deterministic_and_bad_values_are_refused():
    model = _tiny_mlp()
    ctx = model.encode({"state": torch.randn(200, 5)})
    chain = sample_chain(model, ctx, ChainConfig(num_steps=4, mode="mixed", first_stochastic_step=2),
                         generator=torch.Generator().manual_seed(0))
    assert (chain.stochastic.sum(-1) == 1).all() and not chain.stochastic[:, :2].any()
    assert chain.stochastic[:, 2].any() and chain.stochastic[:, 3].any()  # both allowed steps drawn
    noise = torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(1))
    ode = sample_chain(model, ctx, ChainConfig(num_steps=4, mode="ode"), noise=noise)
    for mode in ("sde", "noise", "mixed"):
        cfg = ChainConfig(num_steps=4, mode=mode, first_stochastic_step=3)
        last = sample_chain(model, ctx, cfg, noise=noise)
        assert last.stochastic[:, 3].all() and not last.stochastic[:, :3].any()
        torch.testing.assert_close(last.xs[:, :4], ode.xs[:, :4])  # the ODE up to the last step
        # the stored log-prob is the last step's alone, and re-scoring the stored chain agrees
        torch.testing.assert_close(chain_log_prob(model, ctx, last, cfg)["logp"], last.logp, rtol=1e-4, atol=1e-3)
    for bad in (dict(first_stochastic_step=4), dict(first_stochastic_step=3, mixed_exclude_last=True),
                dict(first_stochastic_step=-1)):
        with pytest.raises(ValueError, match="first_stochastic_step"):
            ChainConfig(num_steps=4, mode="mixed", **bad)


def test_initial_noise_makes_sampling_reproducible():
    model = _tiny_mlp()
    ctx = model.encode({"state": torch.randn(3, 5)})
    noise = torch.randn(3, 4, 3)
    a = sample_chain(model, ctx, ChainConfig(mode="ode"), noise=noise).actions
    b = sample_chain(model, ctx, ChainConfig(mode="ode"), noise=noise).actions
    c = sample_chain(model, ctx, ChainConfig(mode="ode")).actions
    assert torch.equal(a, b) and not torch.allclose(a, c)
