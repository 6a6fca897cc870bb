"""Collecting experience: the outer MDP (env stepped by action chunks) around the inner one (denoising chains).

Two collectors share one per-chunk step:
  collect_steps     fixed T chunks from every env with auto-reset (PPO with GAE)
  collect_episodes  exactly one episode per env from given seeds (GRPO groups, π-StepNFT labels)

Everything a rollout holds lives on the policy's device: with the batched GPU env (``sim.maniskill.batched``)
observations, rewards and done flags arrive there as tensors and never visit the host, except one small copy
per chunk (did an episode end or get cut by the time limit); with the worker-process env they are copied in
once per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pirl_robot.flow.sampler import Chain, ChainConfig, sample_chain
from pirl_robot.policy import Policy


def obs_to_raw(obs: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Batched env observation {"state": (N,S), "images": {cam: (N,H,W,3)}} (numpy or tensors) -> raw policy
    batch tensors on `device` (no copy where they are already there)."""
    raw = {}
    if "state" in obs:
        raw["state"] = _tensor(obs["state"], device, torch.float32)
    for cam, img in obs.get("images", {}).items():
        raw[f"images.{cam}"] = _tensor(img, device)
    return raw


def _tensor(x: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    return t.to(device=device, dtype=dtype or t.dtype, non_blocking=True)


@dataclass
class StepRecord:
    """One chunk decision for every env (batch N)."""

    raw: dict[str, torch.Tensor]
    chain: Chain
    value: torch.Tensor  # (N,)


@torch.no_grad()
def act(policy: Policy, raw: dict[str, torch.Tensor], cfg: ChainConfig, generator: torch.Generator | None,
        noise: torch.Tensor | None = None) -> tuple[StepRecord, torch.Tensor]:
    """Sample one chunk for every env: the record for training and the executed actions (N, H_exec, A), a float32
    tensor on the policy's device."""
    model = policy.model
    ctx = policy.encode(raw)
    chain = sample_chain(model, ctx, cfg, noise=noise, generator=generator)
    value = model.value(ctx, chain.feats_mean) if model.has_value_head else torch.zeros(chain.xs.shape[0],
                                                                                         device=chain.xs.device)
    actions = policy.postprocess(chain.actions, raw)[:, : policy.spec.exec_horizon]
    return StepRecord(raw, chain, value.float()), actions.float()


@torch.no_grad()
def value_of(policy: Policy, raw: dict[str, torch.Tensor], num_steps: int) -> torch.Tensor:
    """V(obs) for bootstrapping. pi0's critic reads chain features averaged over the denoising steps, so they
    come from a chain of the same length as the rollouts' (ODE: the mean path)."""
    if not policy.model.has_value_head:
        return torch.zeros(raw[next(iter(raw))].shape[0], device=policy.device)
    ctx = policy.encode(raw)
    chain = sample_chain(policy.model, ctx, ChainConfig(num_steps=num_steps, mode="ode"))
    return policy.model.value(ctx, chain.feats_mean).float()


@dataclass
class Rollout:
    """Flattened chunk transitions of one collection round (M rows), on the policy's device, ready for
    minibatching. The last four fields are filled by the algorithm that needs them."""

    raw: dict[str, torch.Tensor]  # (M, ...)
    xs: torch.Tensor  # (M, K+1, H, A)
    stochastic: torch.Tensor  # (M, K)
    velocities: torch.Tensor  # (M, K, H, A)
    feats_mean: torch.Tensor  # (M, F): rollout chain features (the critic's input on pi0)
    logp: torch.Tensor  # (M,)
    values: torch.Tensor  # (M,)
    advantages: torch.Tensor  # (M,)
    returns: torch.Tensor  # (M,)
    labels: torch.Tensor  # (M,) +1 from a successful episode, -1 otherwise (π-StepNFT)
    episodes: list[dict] = field(default_factory=list)  # finished-episode stats of this round
    env_steps: int = 0
    env_of_row: torch.Tensor | None = None  # (M,) episode (env) each row belongs to (collect_episodes)
    keep: torch.Tensor | None = None  # (M,) bool: rows that carry a learning signal (GRPO's informative groups)
    step: torch.Tensor | None = None  # (M,) the denoising step trained on (π-StepNFT)

    def __len__(self) -> int:
        return self.logp.shape[0]

    def chain(self, idx: torch.Tensor) -> Chain:
        return Chain(xs=self.xs[idx], stochastic=self.stochastic[idx], velocities=self.velocities[idx],
                     logp=self.logp[idx], feats_mean=self.feats_mean[idx])

    def select(self, rows: torch.Tensor) -> "Rollout":
        """The rows `rows` (bool mask or indices) as a rollout of their own; episode stats and env steps stay those
        of the whole round."""
        def pick(x):
            return None if x is None else x[rows]
        return Rollout(raw=self.batch(rows), xs=self.xs[rows], stochastic=self.stochastic[rows],
                       velocities=self.velocities[rows], feats_mean=self.feats_mean[rows], logp=self.logp[rows],
                       values=self.values[rows], advantages=self.advantages[rows], returns=self.returns[rows],
                       labels=self.labels[rows], episodes=self.episodes, env_steps=self.env_steps,
                       env_of_row=pick(self.env_of_row), keep=pick(self.keep), step=pick(self.step))

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw observation rows idx (for Policy.encode)."""
        return {k: v[idx] for k, v in self.raw.items()}

    def minibatches(self, size: int, generator: torch.Generator, count: int | None = None):
        """Index tensors over a random permutation, `size` rows each, without a tiny tail (mostly noise).
        count: only the first `count` of them (DDP ranks must all take the same number of steps)."""
        perm = torch.randperm(len(self), generator=generator, device=generator.device).to(self.logp.device)
        for c in range(min(num_minibatches(len(self), size), len(self) if count is None else count)):
            yield perm[c * size:(c + 1) * size]


def num_minibatches(rows: int, size: int) -> int:
    """How many minibatches Rollout.minibatches yields for `rows` rows (a tail needs max(2, size // 4) rows)."""
    full, tail = divmod(rows, size)
    return full + (tail >= max(2, size // 4))


def _stack(records: list[StepRecord], pick: torch.Tensor | None = None) -> dict:
    """Stack per-chunk records (T of them, batch N) into (T*N, ...) tensors, keeping rows where `pick`."""
    def cat(xs):
        x = torch.stack(xs, 0).flatten(0, 1)
        return x if pick is None else x[pick]
    raw = {k: cat([r.raw[k] for r in records]) for k in records[0].raw}
    return dict(raw=raw, xs=cat([r.chain.xs for r in records]), stochastic=cat([r.chain.stochastic for r in records]),
                velocities=cat([r.chain.velocities for r in records]), logp=cat([r.chain.logp for r in records]),
                feats_mean=cat([r.chain.feats_mean for r in records]),
                values=cat([r.value for r in records]))


def episode_dict(e) -> dict:
    return {"seed": int(e.seed), "return": float(e.episode_return), "length": int(e.length),
            "success": bool(e.success)}


def collect_steps(policy: Policy, env, obs: dict, num_chunks: int, cfg: ChainConfig, generator: torch.Generator,
                  gamma: float, lam: float, reward_scale: float = 1.0) -> tuple[Rollout, dict]:
    """PPO collection: `num_chunks` chunk decisions in every env, auto-reset, GAE with truncation bootstrap."""
    from pirl_robot.rl.advantages import gae

    dev = policy.device
    n = env.num_envs
    rewards = torch.zeros(num_chunks, n, device=dev)
    terms, dones, boots = (torch.zeros(num_chunks, n, device=dev) for _ in range(3))
    records, episodes, steps = [], [], torch.zeros((), dtype=torch.int64, device=dev)
    for t in range(num_chunks):
        rec, actions = act(policy, obs_to_raw(obs, dev), cfg, generator)
        res = env.step_chunk(actions.to(env.device))
        records.append(rec)
        rewards[t] = _tensor(res.reward, dev, torch.float32) * reward_scale
        term = _tensor(res.terminated, dev, torch.bool)
        trunc = _tensor(res.truncated, dev, torch.bool) & ~term
        terms[t], dones[t] = term.float(), (term | trunc).float()
        if bool(trunc.any()):  # one host sync per chunk; the bootstrap values only where the time limit cut
            final = obs_to_raw(res.final_obs, dev)
            boots[t, trunc] = value_of(policy, {k: v[trunc] for k, v in final.items()}, cfg.num_steps)
        episodes += [episode_dict(e) for e in res.episodes]
        steps += _tensor(res.steps, dev).sum()
        obs = res.obs
    values = torch.stack([r.value for r in records])
    following = torch.cat([values[1:], value_of(policy, obs_to_raw(obs, dev), cfg.num_steps).unsqueeze(0)])
    next_values = torch.where(dones.bool(), boots, following)
    adv, ret = gae(rewards, values, next_values, terms, dones, gamma, lam)
    s = _stack(records)
    m = s["logp"].shape[0]
    return Rollout(**s, advantages=adv.flatten(), returns=ret.flatten(), labels=torch.zeros(m, device=dev),
                   episodes=episodes, env_steps=int(steps)), obs


def collect_episodes(policy: Policy, env, seeds: list[int], cfg: ChainConfig, generator: torch.Generator,
                     max_chunks: int, shared_noise_groups: int = 1) -> tuple[Rollout, list[dict]]:
    """One episode per env, each starting from its seed (equal seeds = identical initial states).

    shared_noise_groups > 1: consecutive blocks of that many envs (GRPO groups) draw the same initial chain
    noise x_1 at each chunk (common random numbers). Every x_1 is still N(0, I), but the outcome differences
    inside a group then come from the stochastic denoising steps the policy gradient credits, not from x_1.
    Chunks an env takes after its episode ended are dropped. Returns the rollout (labels = +1/-1 by episode
    success, advantages left at 0 for the caller, env_of_row set) and one stats dict per env, in env order.
    """
    dev = policy.device
    obs = env.reset(seeds=list(seeds))
    n = len(seeds)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    ret, length = torch.zeros(n, device=dev), torch.zeros(n, dtype=torch.int64, device=dev)
    success = torch.zeros(n, dtype=torch.bool, device=dev)
    records, keeps = [], []
    h, a = policy.model.chunk_size, policy.model.action_dim
    for _ in range(max_chunks):
        noise = None
        if shared_noise_groups > 1:
            noise = torch.randn(-(-n // shared_noise_groups), h, a, generator=generator, device=generator.device)
            noise = noise.repeat_interleave(shared_noise_groups, 0)[:n].to(dev)
        rec, actions = act(policy, obs_to_raw(obs, dev), cfg, generator, noise)
        res = env.step_chunk(actions.to(env.device), active=active.to(env.device))
        records.append(rec)
        keeps.append(active.clone())
        ret += torch.where(active, _tensor(res.reward, dev, torch.float32), 0.0)
        length += torch.where(active, _tensor(res.steps, dev, torch.int64), 0)
        done = (_tensor(res.terminated, dev, torch.bool) | _tensor(res.truncated, dev, torch.bool)) & active
        for e in res.episodes:  # the one success definition: EpisodeStats.success (success once)
            success[e.env_index] = bool(e.success)
        active &= ~done
        obs = res.obs
        if not bool(active.any()):
            break
    if bool(active.any()):
        raise RuntimeError(f"{int(active.sum())} episodes did not end within {max_chunks} chunks: "
                           "max_chunks must cover the env's time limit")
    pick = torch.stack(keeps).flatten()
    s = _stack(records, pick)
    env_of_row = torch.arange(n, device=dev).repeat(len(records))[pick]
    labels = torch.where(success, 1.0, -1.0)[env_of_row]
    host = (ret.cpu().tolist(), success.cpu().tolist(), length.cpu().tolist())
    stats = [{"seed": int(seeds[i]), "return": host[0][i], "success": bool(host[1][i]), "length": int(host[2][i])}
             for i in range(n)]
    m = s["logp"].shape[0]
    rollout = Rollout(**s, advantages=torch.zeros(m, device=dev), returns=torch.zeros(m, device=dev), labels=labels,
                      episodes=stats, env_steps=int(length.sum()), env_of_row=env_of_row)
    return rollout, stats
