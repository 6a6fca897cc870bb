"""Denoising chains of a flow policy and their log-likelihoods (the inner MDP of πRL's two-layer MDP).

Modes:
  ode    plain Euler ODE (deployment and evaluation; no likelihood)
  sde    Flow-SDE at every step (π-StepNFT rollouts, full-SDE PPO)
  mixed  Flow-SDE at one random step per chunk, ODE elsewhere (πRL's cheap default)
  noise  Flow-Noise: every step Gaussian with the learnable noise net's std (exact chain likelihood)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pirl_robot.flow.steps import (gaussian_entropy, gaussian_log_prob, ode_mean, sde_step_stats, time_grid)
from pirl_robot.models.base import Context, FlowPolicyModel

MODES = ("ode", "sde", "mixed", "noise")


@dataclass(frozen=True)
class ChainConfig:
    num_steps: int = 4
    mode: str = "mixed"
    noise_level: float = 0.5  # Flow-SDE's a
    mixed_exclude_last: bool = False
    # Steps before this one are ODE steps in every mode; mixed draws its one SDE step from [first, K) (K-1 with
    # exclude_last). A chain fitted to a few near-deterministic demos contracts every x_t onto one action, so noise
    # injected early is undone by the ODE steps after it: those chunks carry a likelihood term but explore
    # nothing. first_stochastic_step=K-1 explores at the last step only; with Flow-Noise the chunk is then a
    # Gaussian whose mean is exactly the ODE chain's output (the deployed policy).
    first_stochastic_step: int = 0
    # One log-prob per chunk: always the sum over the chunk's entries (H x A, a chunk is one action of the outer
    # MDP); across the chain's stochastic steps "mean" (RLinf) or "sum" (the exact joint density).
    reduction: str = "mean"

    @classmethod
    def for_inference(cls, saved: dict) -> "ChainConfig":
        """The deployment sampler (ODE) from the chain settings stored with a checkpoint or bundle."""
        from pirl_robot.config import to_dataclass  # unknown keys and bad values -> ConfigError (a ValueError)

        saved = dict(saved)
        if "mixed_min_step" in saved:  # its name in checkpoints written before the option covered every mode
            saved["first_stochastic_step"] = saved.pop("mixed_min_step")
        return to_dataclass(cls, {**saved, "mode": "ode"}, "sampler settings")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"chain mode {self.mode!r} not in {MODES}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.num_steps < 1 or (self.mode == "mixed" and self.mixed_exclude_last and self.num_steps < 2):
            raise ValueError(f"num_steps={self.num_steps} too small for mode {self.mode}")
        hi = self.num_steps - 1 if self.mode == "mixed" and self.mixed_exclude_last else self.num_steps
        if not 0 <= self.first_stochastic_step < hi:
            raise ValueError(f"first_stochastic_step={self.first_stochastic_step} must be in [0, {hi}) for "
                             f"num_steps={self.num_steps}"
                             f"{' with mixed_exclude_last' if hi < self.num_steps else ''}")
        if self.noise_level <= 0 and self.mode in ("sde", "mixed"):
            raise ValueError("Flow-SDE needs noise_level > 0")


@dataclass
class Chain:
    """One sampled denoising chain per batch entry. Everything is detached (rollout-time data)."""

    xs: torch.Tensor  # (B, K+1, H, A): xs[:, 0] the initial noise at t = 1, xs[:, K] the action chunk
    stochastic: torch.Tensor  # (B, K) bool: which transitions were sampled stochastically
    velocities: torch.Tensor  # (B, K, H, A): the rollout policy's velocity at every step (π-StepNFT's v_old)
    logp: torch.Tensor  # (B,) log-likelihood of the stochastic transitions (reduced as configured)
    feats_mean: torch.Tensor  # (B, F): per-token features averaged over steps and tokens

    @property
    def actions(self) -> torch.Tensor:
        return self.xs[:, -1]


def _stochastic_mask(cfg: ChainConfig, batch: int, generator: torch.Generator | None,
                     device: torch.device) -> torch.Tensor:
    k = cfg.num_steps
    if cfg.mode == "ode":
        return torch.zeros(batch, k, dtype=torch.bool, device=device)
    if cfg.mode in ("sde", "noise"):
        mask = torch.ones(batch, k, dtype=torch.bool, device=device)
        mask[:, :cfg.first_stochastic_step] = False
        return mask
    hi = k - 1 if cfg.mixed_exclude_last else k
    idx = torch.randint(cfg.first_stochastic_step, hi, (batch,), generator=generator,
                        device=generator.device if generator else "cpu")
    return torch.nn.functional.one_hot(idx.to(device), k).bool()


def _step_stats(model: FlowPolicyModel, cfg: ChainConfig, x: torch.Tensor, v: torch.Tensor, feats: torch.Tensor,
                t: torch.Tensor, d: float, stochastic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of one transition per batch entry; std is only meaningful where `stochastic`."""
    if cfg.mode == "noise":
        return ode_mean(x, v, d), model.noise_std(feats, t)
    if cfg.mode in ("sde", "mixed"):
        mean, std = sde_step_stats(x, v, t, d, cfg.noise_level)
        s = stochastic.view(-1, 1, 1)  # ODE where not stochastic (mixed, and SDE before first_stochastic_step)
        mean = torch.where(s, mean, ode_mean(x, v, d))
        return mean, std
    return ode_mean(x, v, d), torch.ones_like(x)


def _reduce(per_entry: torch.Tensor, mask: torch.Tensor, cfg: ChainConfig) -> torch.Tensor:
    """per_entry (B, K, H, A), mask (B, K) -> (B,): sum over the chunk, then sum or mean over stochastic steps."""
    total = (per_entry.flatten(2).sum(-1) * mask).sum(-1)
    if cfg.reduction == "mean":
        total = total / mask.sum(-1).clamp_min(1)
    return total


@torch.no_grad()
def sample_chain(model: FlowPolicyModel, ctx: Context, cfg: ChainConfig, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, stochastic: torch.Tensor | None = None) -> Chain:
    """Run the K-step chain from `noise` (default: fresh N(0, I)) and record what training needs."""
    b, h, a = model.batch_size(ctx), model.chunk_size, model.action_dim
    device = next(model.parameters()).device
    if noise is None:
        noise = torch.randn(b, h, a, generator=generator, device=device)
    if noise.shape != (b, h, a):
        raise ValueError(f"initial noise must have shape {(b, h, a)}, got {tuple(noise.shape)}")
    grid = time_grid(cfg.num_steps).to(device)
    d = 1.0 / cfg.num_steps
    mask = _stochastic_mask(cfg, b, generator, device) if stochastic is None else stochastic.to(device)
    x = noise.float()
    xs, vs, feats_sum, logps = [x], [], 0.0, []
    for k in range(cfg.num_steps):
        t = grid[k].expand(b)
        v, feats = model.velocity(ctx, x, t)
        mean, std = _step_stats(model, cfg, x, v, feats, t, d, mask[:, k])
        eps = torch.randn(mean.shape, generator=generator, device=device)
        x_next = torch.where(mask[:, k].view(-1, 1, 1), mean + std * eps, mean)
        logps.append(gaussian_log_prob(x_next, mean, std))
        xs.append(x_next)
        vs.append(v)
        feats_sum = feats_sum + feats.float().mean(1)
        x = x_next
    logp = _reduce(torch.stack(logps, 1), mask, cfg)
    return Chain(xs=torch.stack(xs, 1), stochastic=mask, velocities=torch.stack(vs, 1), logp=logp,
                 feats_mean=feats_sum / cfg.num_steps)


def chain_log_prob(model: FlowPolicyModel, ctx: Context, chain: Chain, cfg: ChainConfig,
                   include_prior: bool = False) -> dict[str, torch.Tensor]:
    """Recompute, with gradients, the log-likelihood of a stored chain's stochastic transitions.

    Returns logp (B,), entropy (B,) of the stochastic steps, and feats_mean (B, F) of the evaluated steps.
    Where every entry has exactly one stochastic step (mixed mode) only that step is evaluated, in one batched
    forward pass; otherwise every step with a stochastic entry is.
    include_prior adds log N(x_1; 0, I); with reduction "sum" logp is then the exact joint density of the chain
    (the prior is a constant for the policy gradient, needed only to check the likelihood).
    """
    b, k_steps = chain.stochastic.shape
    grid = time_grid(k_steps).to(chain.xs.device)
    d = 1.0 / k_steps
    mask = chain.stochastic
    if bool((mask.sum(-1) == 1).all()):
        k = mask.float().argmax(-1)
        rows = torch.arange(b, device=k.device)
        x, x_next, t = chain.xs[rows, k], chain.xs[rows, k + 1], grid[k]
        v, feats = model.velocity(ctx, x, t)
        mean, std = _step_stats(model, cfg, x, v, feats, t, d, torch.ones(b, dtype=torch.bool, device=k.device))
        one = torch.ones(b, 1, dtype=torch.bool, device=k.device)
        logp = _reduce(gaussian_log_prob(x_next, mean, std).unsqueeze(1), one, cfg)
        ent = _reduce(gaussian_entropy(std).expand_as(mean).unsqueeze(1), one, cfg)
        feats_mean = feats.float().mean(1)
    else:
        logps, ents, feats_all, used = [], [], [], []
        for k in range(k_steps):
            if not mask[:, k].any():
                continue
            t = grid[k].expand(b)
            x = chain.xs[:, k]
            v, feats = model.velocity(ctx, x, t)
            mean, std = _step_stats(model, cfg, x, v, feats, t, d, mask[:, k])
            logps.append(gaussian_log_prob(chain.xs[:, k + 1], mean, std))
            ents.append(gaussian_entropy(std).expand_as(mean))
            feats_all.append(feats.float().mean(1))
            used.append(mask[:, k])
        m = torch.stack(used, 1)
        logp, ent = _reduce(torch.stack(logps, 1), m, cfg), _reduce(torch.stack(ents, 1), m, cfg)
        feats_mean = torch.stack(feats_all, 1).mean(1)
    if include_prior:
        prior = gaussian_log_prob(chain.xs[:, 0], torch.zeros_like(chain.xs[:, 0]), torch.ones_like(chain.xs[:, 0]))
        logp = logp + prior.flatten(1).sum(-1)
    return {"logp": logp, "entropy": ent, "feats_mean": feats_mean}


def flow_matching_loss(model: FlowPolicyModel, ctx: Context, actions: torch.Tensor,
                       generator: torch.Generator | None = None, is_pad: torch.Tensor | None = None) -> torch.Tensor:
    """Conditional flow-matching (behaviour cloning) loss: x_t = t*eps + (1-t)*a, target v = eps - a.

    t ~ Beta(1.5, 1) on [0.001, 1] as in pi0, which weights the noisier half of the path more.
    is_pad (B, H): chunk entries past the episode end (padding), left out of the loss.
    """
    b = actions.shape[0]
    beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
    t = (beta.sample((b,)) * 0.999 + 0.001).to(actions)
    eps = torch.randn(actions.shape, generator=generator, device=actions.device)
    tb = t.view(-1, 1, 1)
    v, _ = model.velocity(ctx, tb * eps + (1 - tb) * actions, t)
    err = ((v - (eps - actions)) ** 2).mean(-1)  # (B, H)
    if is_pad is not None:
        keep = (~is_pad.bool()).to(err)
        return (err * keep).sum() / keep.sum().clamp_min(1.0)
    return err.mean()
