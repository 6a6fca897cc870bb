"""The RL algorithms as small strategy objects: how they collect, and the loss of one minibatch.

  ppo      Flow-SDE PPO (mixed or full SDE chains) or Flow-Noise PPO (noise-net chains), with a critic and GAE
  grpo     critic-free: G rollouts per initial state, group-normalised episode returns, PPO-clipped ratio
  stepnft  π-StepNFT: critic- and likelihood-free; mirrored-branch ranking loss on one SDE step per chunk
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable

import torch

from pirl_robot.flow.sampler import ChainConfig, chain_log_prob
from pirl_robot.flow.steps import time_grid
from pirl_robot.policy import Policy
from pirl_robot.rl.advantages import group_advantages
from pirl_robot.rl.losses import PPOConfig, StepNFTConfig, ppo_policy_loss, stepnft_loss, value_loss
from pirl_robot.rl.rollout import Rollout, collect_episodes, collect_steps


@dataclass
class AlgoConfig:
    kind: str = "ppo"  # ppo | grpo | stepnft
    chain: ChainConfig = ChainConfig()
    ppo: PPOConfig = PPOConfig()
    stepnft: StepNFTConfig = StepNFTConfig()
    gamma: float = 0.99
    gae_lambda: float = 0.95
    reward_scale: float = 1.0  # PPO: rewards are multiplied by it so returns (and the value clip) are O(1)
    chunks_per_env: int = 16  # PPO: chunk decisions per env per iteration
    group_size: int = 8  # GRPO
    group_shared_noise: bool = False  # GRPO: a group shares its initial chain noise (see collect_episodes)
    # GRPO's episode reward: "success" (πRL: 1 if the episode succeeded, else 0) or "return" (the env's, shaped)
    group_reward: str = "success"
    min_group_success: float = 0.1  # groups whose success rate lies outside [min, max] are dropped
    max_group_success: float = 0.9
    update_epochs: int = 4
    minibatch_size: int = 256
    actor_lr: float = 3e-4
    critic_lr: float = 1e-3
    max_grad_norm: float = 1.0
    normalize_advantages: bool = True
    target_kl: float | None = None  # stop the epoch loop early when approx KL exceeds it
    # "linear": both learning rates fall linearly to 0 at the run's last iteration (rl.iterations); resuming with
    # more iterations stretches the schedule. (Tried against a late swing on PushCube: not better, benchmarks.md.)
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.kind not in ("ppo", "grpo", "stepnft"):
            raise ValueError(f"algo kind must be ppo, grpo or stepnft, got {self.kind!r}")
        if self.kind == "stepnft" and self.chain.mode != "sde":
            raise ValueError("π-StepNFT rolls out with the SDE at every step: set chain.mode=sde")
        if self.kind == "stepnft" and abs(self.chain.noise_level - self.stepnft.noise_level) > 1e-9:
            raise ValueError(f"π-StepNFT's branch energies must use the rollout's noise level: chain.noise_level="
                             f"{self.chain.noise_level} != stepnft.noise_level={self.stepnft.noise_level}")
        if self.stepnft.labels not in ("success", "group"):
            raise ValueError(f"stepnft.labels must be 'success' or 'group', got {self.stepnft.labels!r}")
        if self.stepnft.labels == "group" and self.stepnft.centre_labels:
            raise ValueError("stepnft.centre_labels centres +/-1 success labels; group labels are centred per group")
        if self.group_reward not in ("success", "return"):
            raise ValueError(f"group_reward must be 'success' or 'return', got {self.group_reward!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        if self.kind in ("ppo", "grpo") and self.chain.mode == "ode":
            raise ValueError(f"{self.kind} needs a stochastic chain (mixed, sde or noise), not ode")


SKIPPED = "skipped"  # a loss's stats key: the minibatch carries no signal (no optimizer step where all ranks agree)


@dataclass
class CollectContext:
    """What an algorithm needs to collect experience (and nothing of the trainer's)."""

    policy: Policy
    env: Any  # a chunked vector env (sim.vector_types protocol)
    generator: torch.Generator  # on the policy's device
    next_seeds: Callable[[int], list[int]]  # n training-episode seeds (disjoint from evaluation seeds)
    max_chunks: int  # chunk decisions that cover one whole episode


class Algorithm(abc.ABC):
    """How an algorithm collects a rollout and the loss of one minibatch of it."""

    uses_critic = False

    def __init__(self, cfg: AlgoConfig):
        self.cfg = cfg

    @abc.abstractmethod
    def collect(self, ctx: CollectContext) -> Rollout:
        """One round of experience with the current policy."""

    @abc.abstractmethod
    def loss(self, policy: Policy, rollout: Rollout, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Loss of minibatch idx (always a tensor in the graph: DDP ranks must all run backward)."""

    def restart(self) -> None:
        """The env was reset from outside (an evaluation on the training envs): start fresh episodes."""


def _episode_seeds(ctx: CollectContext, group_size: int) -> list[int]:
    n = ctx.env.num_envs
    if n % group_size:
        raise ValueError(f"num_envs={n} must be a multiple of the group size {group_size}")
    base = ctx.next_seeds(n // group_size)
    return [s for s in base for _ in range(group_size)]


class PPO(Algorithm):
    """Flow-SDE / Flow-Noise PPO; carries the envs' observations from one round to the next (auto-reset envs)."""

    uses_critic = True

    def __init__(self, cfg: AlgoConfig):
        super().__init__(cfg)
        self.obs: dict | None = None

    def restart(self) -> None:
        self.obs = None

    def collect(self, ctx: CollectContext) -> Rollout:
        if self.obs is None:
            self.obs = ctx.env.reset(seeds=ctx.next_seeds(ctx.env.num_envs))
        rollout, self.obs = collect_steps(ctx.policy, ctx.env, self.obs, self.cfg.chunks_per_env, self.cfg.chain,
                                          ctx.generator, self.cfg.gamma, self.cfg.gae_lambda, self.cfg.reward_scale)
        return rollout

    def loss(self, policy, rollout, idx):
        c = self.cfg
        ctx = policy.encode(rollout.batch(idx))
        out = chain_log_prob(policy.model, ctx, rollout.chain(idx), c.chain)
        adv = rollout.advantages[idx]
        if c.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg, stats = ppo_policy_loss(out["logp"], rollout.logp[idx], adv, c.ppo)
        # The critic sees the same chain features as at rollout time (stored), not those of the one re-scored step.
        values = policy.model.value(ctx, rollout.feats_mean[idx])
        vl = value_loss(values, rollout.values[idx], rollout.returns[idx], c.ppo)
        ent = out["entropy"].mean()
        loss = pg + c.ppo.value_coef * vl - c.ppo.entropy_coef * ent
        return loss, {**stats, "policy_loss": pg.item(), "value_loss": vl.item(), "entropy": ent.item()}


def group_relative(rollout: Rollout, stats: list[dict], cfg: AlgoConfig) -> Rollout:
    """GRPO's group advantages of one round of episodes (stats in env order, groups of cfg.group_size consecutive
    envs from one initial state) as rollout.advantages, and the rows of the informative groups only (rollout.keep
    marks them; with none, the rollout stays whole and every row has keep False)."""
    dev = rollout.logp.device
    success = torch.tensor([s["success"] for s in stats], device=dev)
    reward = success.float() if cfg.group_reward == "success" else torch.tensor([s["return"] for s in stats],
                                                                                 device=dev)
    groups = torch.arange(len(stats), device=dev) // cfg.group_size
    ep_adv, keep = group_advantages(reward, groups, success, cfg.min_group_success, cfg.max_group_success)
    rollout.advantages = ep_adv[rollout.env_of_row]
    rollout.keep = keep[rollout.env_of_row]
    return rollout.select(rollout.keep) if bool(rollout.keep.any()) else rollout


class GRPO(Algorithm):
    """Critic-free: G episodes per initial state; an episode's advantage is its reward relative to its group's
    (mean and std over the group). Groups outside the success band are dropped before minibatching, so every
    minibatch holds informative rows only and no dropped row enters a loss or a normalisation."""

    kept_frac = 1.0  # share of the last round's rows in informative groups

    def collect(self, ctx: CollectContext) -> Rollout:
        c = self.cfg
        seeds = _episode_seeds(ctx, c.group_size)
        rollout, stats = collect_episodes(ctx.policy, ctx.env, seeds, c.chain, ctx.generator, ctx.max_chunks,
                                          c.group_size if c.group_shared_noise else 1)
        return self.informative(rollout, stats)

    def informative(self, rollout: Rollout, stats: list[dict]) -> Rollout:
        """Group advantages of one round of episodes and the rows of the informative groups only."""
        rows = len(rollout)
        rollout = group_relative(rollout, stats, self.cfg)
        self.kept_frac = int(rollout.keep.sum()) / rows
        return rollout

    def loss(self, policy, rollout, idx):
        kept = idx[rollout.keep[idx]]
        if len(kept) == 0:  # no informative group in this minibatch: a zero loss that still runs the model
            ctx = policy.encode(rollout.batch(idx[:1]))
            out = chain_log_prob(policy.model, ctx, rollout.chain(idx[:1]), self.cfg.chain)
            return 0.0 * out["logp"].sum(), {SKIPPED: True, "kept_frac": self.kept_frac}
        ctx = policy.encode(rollout.batch(kept))
        out = chain_log_prob(policy.model, ctx, rollout.chain(kept), self.cfg.chain)
        pg, stats = ppo_policy_loss(out["logp"], rollout.logp[kept], rollout.advantages[kept], self.cfg.ppo)
        loss = pg - self.cfg.ppo.entropy_coef * out["entropy"].mean()
        return loss, {**stats, "policy_loss": pg.item(), "kept_frac": self.kept_frac}


class StepNFT(Algorithm):
    def collect(self, ctx: CollectContext) -> Rollout:
        c = self.cfg
        grouped = c.stepnft.labels == "group"
        seeds = _episode_seeds(ctx, c.group_size) if grouped else ctx.next_seeds(ctx.env.num_envs)
        rollout, stats = collect_episodes(ctx.policy, ctx.env, seeds, c.chain, ctx.generator, ctx.max_chunks)
        if grouped:  # each episode's label is its GRPO advantage: a per-initial-state baseline, uninformative groups out
            rollout = group_relative(rollout, stats, c)
            rollout.labels = rollout.advantages  # 0 in dropped groups (group_advantages)
        else:
            rollout.labels = self.ranking_labels(rollout.labels)
        rollout.step = self.training_steps(rollout, ctx.generator)
        return rollout

    def ranking_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """+1/-1 per row, or with stepnft.centre_labels minus their mean over this rank's rows (a constant baseline
        leaves the expected gradient alone, so a per-rank one needs no all-reduce)."""
        return labels - labels.mean() if self.cfg.stepnft.centre_labels else labels

    @staticmethod
    def training_steps(rollout: Rollout, generator: torch.Generator) -> torch.Tensor:
        """The training transition of each row: one random stochastic (SDE) step of its chain. Steps before
        chain.first_stochastic_step were ODE steps, deterministic: no SDE energy describes them."""
        weights = rollout.stochastic.float().to(generator.device)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1).to(rollout.logp.device)

    def loss(self, policy, rollout, idx):
        c = self.cfg
        ctx = policy.encode(rollout.batch(idx))
        step = rollout.step[idx]
        k = c.chain.num_steps
        x_t, x_next = rollout.xs[idx, step], rollout.xs[idx, step + 1]
        t = time_grid(k).to(x_t.device)[step]
        v, _ = policy.model.velocity(ctx, x_t, t)
        loss, stats = stepnft_loss(v, rollout.velocities[idx, step], x_t, x_next, t, 1.0 / k, rollout.labels[idx],
                                   c.stepnft)
        if rollout.keep is not None and not bool(rollout.keep[idx].any()):
            # group labels, no informative group: all labels 0, so no step at all (Adam's momentum and the weight
            # decay would still move the policy); the loss stays in the graph for DDP
            return 0.0 * loss, {**stats, SKIPPED: True}
        return loss, stats


ALGORITHMS = {"ppo": PPO, "grpo": GRPO, "stepnft": StepNFT}


def make_algorithm(cfg: AlgoConfig) -> Algorithm:
    return ALGORITHMS[cfg.kind](cfg)
