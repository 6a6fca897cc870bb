"""Policy and value losses: PPO (clip, dual-clip), clipped Huber value loss, and π-StepNFT's ranking loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pirl_robot.flow.steps import sde_step_stats


@dataclass(frozen=True)
class PPOConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 3.0  # bounds the loss of a negative-advantage sample whose ratio exploded; <= 1 disables
    value_clip: float = 0.2
    huber_delta: float = 10.0
    entropy_coef: float = 0.0
    value_coef: float = 0.5


def ppo_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                    cfg: PPOConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate with dual clip. All inputs (B,); returns the mean loss and diagnostics."""
    log_ratio = (logp - logp_old).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    surr1 = ratio * adv
    surr2 = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * adv
    loss = -torch.min(surr1, surr2)
    if cfg.dual_clip > 1.0:
        loss = torch.where(adv < 0, torch.min(loss, -cfg.dual_clip * adv), loss)
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > torch.where(ratio > 1, cfg.clip_high, cfg.clip_low)).float().mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()
    return loss.mean(), {"ratio_mean": ratio.mean().item(), "clip_frac": clipped.item(),
                         "approx_kl": approx_kl.item()}


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor,
               cfg: PPOConfig) -> torch.Tensor:
    """Huber loss on returns, with the PPO-style clip of the value change (the larger of the two losses)."""
    clipped = values_old + (values - values_old).clamp(-cfg.value_clip, cfg.value_clip)
    l1 = F.huber_loss(values, returns, delta=cfg.huber_delta, reduction="none")
    l2 = F.huber_loss(clipped, returns, delta=cfg.huber_delta, reduction="none")
    return torch.max(l1, l2).mean()


@dataclass(frozen=True)
class StepNFTConfig:
    noise_level: float = 0.2
    beta: float = 1.0  # mirrored branch scale
    beta_dpo: float = 1.0
    max_delta_norm: float = 0.5
    reg_coef: float = 1e-4
    # y - mean(y) over the rollout's rows instead of +/-1: the same expected gradient (the rank gradient at
    # v_theta = v_old is y times zero-mean SDE noise, and a constant baseline leaves its mean alone) with less
    # variance when success is rare and the -1 rows dominate, as a baseline does for REINFORCE
    centre_labels: bool = False
    # "success": y = +1 / -1 by the episode's success (the paper). "group": episodes come in groups from one
    # initial state (algo.group_size) and y is the episode's GRPO advantage (algo.group_reward, normalised within
    # its group; groups outside algo's success band get 0): a per-state baseline, and with group_reward=return
    # the shaped return's ranking instead of a bare success bit
    labels: str = "success"


def stepnft_energies(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x_next: torch.Tensor,
                     t: torch.Tensor, d: float, cfg: StepNFTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies of a stored transition under the mirrored branches v_old +/- beta * dv (dv rescaled to
    ||dv|| <= max_delta_norm per sample). E = sum (x_next - mean)^2 / (std^2 + 1e-4), std detached."""
    dv = v_theta - v_old
    norm = dv.flatten(1).norm(dim=-1).clamp_min(1e-12).view(-1, *([1] * (dv.ndim - 1)))
    dv = dv * torch.clamp(cfg.max_delta_norm / norm, max=1.0)
    energies = []
    for sign in (1.0, -1.0):
        mean, std = sde_step_stats(x_t, v_old + sign * cfg.beta * dv, t, d, cfg.noise_level)
        energies.append(((x_next - mean) ** 2 / (std.detach() ** 2 + 1e-4)).flatten(1).sum(-1))
    return energies[0], energies[1]


def stepnft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x_next: torch.Tensor,
                 t: torch.Tensor, d: float, label: torch.Tensor,
                 cfg: StepNFTConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """π-StepNFT: softplus(beta_dpo/2 * y * (E+ - E-)) + reg * mean((v_theta - v_old)^2), y = +1 success, -1 failure
    (or those minus their mean, StepNFTConfig.centre_labels).

    Minimising it makes the positive branch explain successful transitions and the negative branch failed ones;
    no likelihood of the chain and no critic are needed.
    """
    e_plus, e_minus = stepnft_energies(v_theta, v_old, x_t, x_next, t, d, cfg)
    rank = F.softplus(0.5 * cfg.beta_dpo * label * (e_plus - e_minus)).mean()
    reg = cfg.reg_coef * ((v_theta - v_old) ** 2).mean()
    return rank + reg, {"e_plus": e_plus.mean().item(), "e_minus": e_minus.mean().item(), "rank_loss": rank.item(),
                        "approx_kl": sde_step_kl(v_old, v_theta, x_t, t, d, cfg.noise_level).mean().item()}


@torch.no_grad()
def sde_step_kl(v_old: torch.Tensor, v_new: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, d: float,
                noise_level: float) -> torch.Tensor:
    """KL(old || new) of one Flow-SDE step per sample, exact: both are Gaussians with the same std (it does not
    depend on v), so KL = sum (mean_old - mean_new)^2 / (2 std^2). π-StepNFT has no ratio, and this is what PPO's
    approx_kl estimates for the same transition, so `target_kl` stops its update on the same scale."""
    mean_old, std = sde_step_stats(x_t, v_old, t, d, noise_level)
    mean_new, _ = sde_step_stats(x_t, v_new, t, d, noise_level)
    return ((mean_old - mean_new) ** 2 / (2.0 * std**2)).flatten(1).sum(-1)
