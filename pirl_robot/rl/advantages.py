"""Advantage estimators at the chunk level (one transition = one executed action chunk)."""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        done: torch.Tensor, gamma: float = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a (T, N) rollout with auto-resetting envs.

    next_values[t] is V of the observation that follows chunk t in the same episode: the next chunk's start,
    or, where the episode was cut by the time limit, V(final observation). Terminated episodes bootstrap
    nothing; `done` (terminated or truncated) stops the recursion at episode boundaries.
    Returns (advantages, returns), both (T, N).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminated[t]) - values[t]
        last = delta + gamma * lam * (1.0 - done[t]) * last
        adv[t] = last
    return adv, adv + values


def group_advantages(returns: torch.Tensor, group_ids: torch.Tensor, success: torch.Tensor | None = None,
                     min_success: float = 0.1, max_success: float = 0.9,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO: advantage of each episode relative to its group (episodes from one initial state).

    A = (R - mean_G) / (std_G + eps). Groups whose mean success lies outside [min_success, max_success] carry
    no learning signal (all solved or all failed) and are dropped. Returns (advantages, keep mask) per episode.
    """
    adv = torch.zeros_like(returns, dtype=torch.float32)
    keep = torch.zeros_like(returns, dtype=torch.bool)
    for g in torch.unique(group_ids):
        m = group_ids == g
        r = returns[m].float()
        if success is not None:
            rate = success[m].float().mean()
            if rate < min_success or rate > max_success:
                continue
        if m.sum() < 2:
            continue
        adv[m] = (r - r.mean()) / (r.std(unbiased=False) + eps)
        keep[m] = True
    return adv, keep
