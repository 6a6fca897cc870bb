"""Collecting experience: the outer MDP (env stepped by action chunks) around the inner one (denoising chains).

Two collectors share one per-chunk step:
  collect_steps     fixed T chunks from every env with auto-reset (PPO with GAE)
  collect_episodes  exactly one episode per env from given seeds (GRPO groups, π-StepNFT labels)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pirl_robot.flow.sampler import Chain, ChainConfig, sample_chain
from pirl_robot.policy import Policy


def obs_to_raw(obs: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Batched env observation {"state": (N,S), "images": {cam: (N,H,W,3)}} -> raw policy batch tensors."""
    raw = {}
    if "state" in obs:
        raw["state"] = torch.as_tensor(np.asarray(obs["state"], dtype=np.float32), device=device)
    for cam, img in obs.get("images", {}).items():
        raw[f"images.{cam}"] = torch.as_tensor(np.asarray(img), device=device)
    return raw


@dataclass
class StepRecord:
    """One chunk decision for every env (batch N)."""

    raw: dict[str, torch.Tensor]
    chain: Chain
    value: torch.Tensor  # (N,)


@torch.no_grad()
def act(policy: Policy, raw: dict[str, torch.Tensor], cfg: ChainConfig, generator: torch.Generator | None,
        noise: torch.Tensor | None = None) -> tuple[StepRecord, np.ndarray]:
    model = policy.model
    ctx = model.encode(policy.prepare(raw))
    chain = sample_chain(model, ctx, cfg, noise=noise, generator=generator)
    value = model.value(ctx, chain.feats_mean) if model.has_value_head else torch.zeros(chain.xs.shape[0])
    actions = policy.postprocess(chain.actions, raw)[:, : policy.spec.exec_horizon]
    return StepRecord(raw, chain, value.float()), actions.float().cpu().numpy()


@torch.no_grad()
def value_of(policy: Policy, obs: dict, num_steps: int) -> torch.Tensor:
    """V(obs) for bootstrapping. pi0's critic reads chain features averaged over the denoising steps, so they
    come from a chain of the same length as the rollouts' (ODE: the mean path)."""
    raw = obs_to_raw(obs)
    if not policy.model.has_value_head:
        return torch.zeros(raw[next(iter(raw))].shape[0])
    ctx = policy.model.encode(policy.prepare(raw))
    chain = sample_chain(policy.model, ctx, ChainConfig(num_steps=num_steps, mode="ode"))
    return policy.model.value(ctx, chain.feats_mean).float()


@dataclass
class Rollout:
    """Flattened chunk transitions of one collection round, ready for minibatching."""

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

    def __len__(self) -> int:
        return self.logp.shape[0]

    def chain(self, idx: torch.Tensor) -> Chain:
        return Chain(xs=self.xs[idx], stochastic=self.stochastic[idx], velocities=self.velocities[idx],
                     logp=self.logp[idx], feats_mean=self.feats_mean[idx])

    def minibatches(self, size: int, generator: torch.Generator):
        perm = torch.randperm(len(self), generator=generator)
        for i in range(0, len(self), size):
            idx = perm[i:i + size]
            if len(idx) >= max(2, size // 4):  # drop a tiny tail: its gradient is mostly noise
                yield idx


def _stack(records: list[StepRecord], pick=None) -> dict:
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


def _rows(obs: dict, mask: np.ndarray) -> dict:
    out = {k: v[mask] for k, v in obs.items() if k != "images"}
    if "images" in obs:
        out["images"] = {c: v[mask] for c, v in obs["images"].items()}
    return out


def collect_steps(policy: Policy, env, obs: dict, num_chunks: int, cfg: ChainConfig, generator: torch.Generator,
                  gamma: float, lam: float, reward_scale: float = 1.0) -> tuple[Rollout, dict]:
    """PPO collection: `num_chunks` chunk decisions in every env, auto-reset, GAE with truncation bootstrap."""
    from pirl_robot.rl.advantages import gae

    records, rewards, terms, dones, boots, episodes, steps = [], [], [], [], [], [], 0
    for _ in range(num_chunks):
        rec, actions = act(policy, obs_to_raw(obs), cfg, generator)
        res = env.step_chunk(actions)
        records.append(rec)
        rewards.append(torch.as_tensor(res.reward, dtype=torch.float32) * reward_scale)
        term = np.asarray(res.terminated, bool)
        trunc = np.asarray(res.truncated, bool) & ~term
        terms.append(torch.as_tensor(term, dtype=torch.float32))
        dones.append(torch.as_tensor(term | trunc, dtype=torch.float32))
        boot = torch.zeros(len(term))
        if trunc.any():
            boot[torch.as_tensor(trunc)] = value_of(policy, _rows(res.final_obs, trunc), cfg.num_steps)
        boots.append(boot)
        episodes += [episode_dict(e) for e in res.episodes]
        steps += int(np.sum(res.steps))
        obs = res.obs
    values = torch.stack([r.value for r in records])
    following = torch.cat([values[1:], value_of(policy, obs, cfg.num_steps).unsqueeze(0)])
    done_t = torch.stack(dones)
    next_values = torch.where(done_t.bool(), torch.stack(boots), following)
    adv, ret = gae(torch.stack(rewards), values, next_values, torch.stack(terms), done_t, gamma, lam)
    s = _stack(records)
    m = s["logp"].shape[0]
    return Rollout(**s, advantages=adv.flatten(), returns=ret.flatten(), labels=torch.zeros(m), episodes=episodes,
                   env_steps=steps), obs


def collect_episodes(policy: Policy, env, seeds: list[int], cfg: ChainConfig, generator: torch.Generator,
                     max_chunks: int, shared_noise_groups: int = 1) -> tuple[Rollout, list[dict]]:
    """One episode per env, each starting from its seed (equal seeds = identical initial states).

    shared_noise_groups > 1: consecutive blocks of that many envs (GRPO groups) draw the same initial chain
    noise x_1 at each chunk (common random numbers). Every x_1 is still N(0, I), but the outcome differences
    inside a group then come from the stochastic denoising steps the policy gradient credits, not from x_1.
    Chunks an env takes after its episode ended are dropped. Returns the rollout (labels = +1/-1 by episode
    success, advantages left at 0 for the caller) and one stats dict per env, in env order.
    """
    obs = env.reset(seeds=list(seeds))
    n = len(seeds)
    active = np.ones(n, bool)
    ret, success, length = np.zeros(n), np.zeros(n, bool), np.zeros(n, int)
    records, keeps, env_ids, steps = [], [], [], 0
    h, a = policy.model.chunk_size, policy.model.action_dim
    for _ in range(max_chunks):
        noise = None
        if shared_noise_groups > 1:
            noise = torch.randn(-(-n // shared_noise_groups), h, a, generator=generator)
            noise = noise.repeat_interleave(shared_noise_groups, 0)[:n]
        rec, actions = act(policy, obs_to_raw(obs), cfg, generator, noise)
        res = env.step_chunk(actions, active=active)
        records.append(rec)
        keeps.append(torch.as_tensor(active.copy()))
        env_ids.append(torch.arange(n))
        ret[active] += np.asarray(res.reward)[active]
        length[active] += np.asarray(res.steps)[active]
        steps += int(np.asarray(res.steps)[active].sum())
        done = (np.asarray(res.terminated, bool) | np.asarray(res.truncated, bool)) & active
        success[done] = np.asarray(res.success, bool)[done]
        active &= ~done
        obs = res.obs
        if not active.any():
            break
    if active.any():
        raise RuntimeError(f"{int(active.sum())} episodes did not end within {max_chunks} chunks: "
                           "max_chunks must cover the env's time limit")
    pick = torch.stack(keeps).flatten()
    s = _stack(records, pick)
    env_of_row = torch.stack(env_ids).flatten()[pick]
    labels = torch.as_tensor(np.where(success, 1.0, -1.0), dtype=torch.float32)[env_of_row]
    stats = [{"seed": int(seeds[i]), "return": float(ret[i]), "success": bool(success[i]), "length": int(length[i])}
             for i in range(n)]
    m = s["logp"].shape[0]
    rollout = Rollout(**s, advantages=torch.zeros(m), returns=torch.zeros(m), labels=labels, episodes=stats,
                      env_steps=steps)
    rollout.env_of_row = env_of_row  # which episode each row belongs to (GRPO spreads episode advantages)
    return rollout, stats
