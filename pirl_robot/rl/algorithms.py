"""The RL algorithms as small strategy objects: how they collect, and the loss of one minibatch.

  ppo      Flow-SDE PPO (mixed or full SDE chains) or Flow-Noise PPO (noise-net chains), with a critic and GAE
  grpo     critic-free: G rollouts per initial state, group-normalised episode returns, PPO-clipped ratio
  stepnft  π-StepNFT: critic- and likelihood-free; mirrored-branch ranking loss on one SDE step per chunk
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pirl_robot.flow.sampler import ChainConfig, chain_log_prob
from pirl_robot.flow.steps import time_grid
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
    min_group_success: float = 0.1
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
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"lr_schedule must be 'constant' or 'linear', got {self.lr_schedule!r}")
        if self.kind in ("ppo", "grpo") and self.chain.mode == "ode":
            raise ValueError(f"{self.kind} needs a stochastic chain (mixed, sde or noise), not ode")


class Algorithm:
    uses_critic = False

    def __init__(self, cfg: AlgoConfig):
        self.cfg = cfg

    def collect(self, trainer) -> Rollout:
        raise NotImplementedError

    def loss(self, trainer, rollout: Rollout, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def _episode_seeds(trainer, group_size: int) -> list[int]:
    n = trainer.env.num_envs
    if n % group_size:
        raise ValueError(f"num_envs={n} must be a multiple of the group size {group_size}")
    base = trainer.next_seed(n // group_size)
    return [s for s in base for _ in range(group_size)]


class PPO(Algorithm):
    uses_critic = True

    def collect(self, trainer) -> Rollout:
        rollout, trainer.obs = collect_steps(trainer.policy, trainer.env, trainer.obs, self.cfg.chunks_per_env,
                                             self.cfg.chain, trainer.gen, self.cfg.gamma, self.cfg.gae_lambda,
                                             self.cfg.reward_scale)
        return rollout

    def loss(self, trainer, rollout, idx):
        c = self.cfg
        model, policy = trainer.policy.model, trainer.policy
        ctx = model.encode(policy.prepare({k: v[idx] for k, v in rollout.raw.items()}))
        out = chain_log_prob(model, ctx, rollout.chain(idx), c.chain)
        adv = rollout.advantages[idx]
        if c.normalize_advantages:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg, stats = ppo_policy_loss(out["logp"], rollout.logp[idx], adv, c.ppo)
        # The critic sees the same chain features as at rollout time (stored), not those of the one re-scored step.
        values = model.value(ctx, rollout.feats_mean[idx])
        vl = value_loss(values, rollout.values[idx], rollout.returns[idx], c.ppo)
        ent = out["entropy"].mean()
        loss = pg + c.ppo.value_coef * vl - c.ppo.entropy_coef * ent
        return loss, {**stats, "policy_loss": pg.item(), "value_loss": vl.item(), "entropy": ent.item()}


class GRPO(Algorithm):
    def collect(self, trainer) -> Rollout:
        c = self.cfg
        seeds = _episode_seeds(trainer, c.group_size)
        rollout, stats = collect_episodes(trainer.policy, trainer.env, seeds, c.chain, trainer.gen,
                                          trainer.max_chunks, c.group_size if c.group_shared_noise else 1)
        returns = torch.tensor([s["return"] for s in stats])
        success = torch.tensor([s["success"] for s in stats])
        groups = torch.arange(len(stats)) // c.group_size
        ep_adv, keep = group_advantages(returns, groups, success, c.min_group_success, c.max_group_success)
        rows = rollout.env_of_row
        rollout.advantages = ep_adv[rows]
        rollout.keep = keep[rows]
        return rollout

    def loss(self, trainer, rollout, idx):
        idx = idx[rollout.keep[idx]]
        if len(idx) == 0:
            return None, {}
        model, policy = trainer.policy.model, trainer.policy
        ctx = model.encode(policy.prepare({k: v[idx] for k, v in rollout.raw.items()}))
        out = chain_log_prob(model, ctx, rollout.chain(idx), self.cfg.chain)
        pg, stats = ppo_policy_loss(out["logp"], rollout.logp[idx], rollout.advantages[idx], self.cfg.ppo)
        loss = pg - self.cfg.ppo.entropy_coef * out["entropy"].mean()
        return loss, {**stats, "policy_loss": pg.item(), "kept_frac": float(rollout.keep.float().mean())}


class StepNFT(Algorithm):
    def collect(self, trainer) -> Rollout:
        seeds = trainer.next_seed(trainer.env.num_envs)
        rollout, _ = collect_episodes(trainer.policy, trainer.env, seeds, self.cfg.chain, trainer.gen,
                                      trainer.max_chunks)
        # One random denoising step per chunk sample is the training transition.
        k = self.cfg.chain.num_steps
        rollout.step = torch.randint(0, k, (len(rollout),), generator=trainer.gen)
        return rollout

    def loss(self, trainer, rollout, idx):
        c = self.cfg
        model, policy = trainer.policy.model, trainer.policy
        ctx = model.encode(policy.prepare({k: v[idx] for k, v in rollout.raw.items()}))
        step, rows = rollout.step[idx], idx
        k = c.chain.num_steps
        x_t, x_next = rollout.xs[rows, step], rollout.xs[rows, step + 1]
        t = time_grid(k)[step]
        v, _ = model.velocity(ctx, x_t, t)
        return stepnft_loss(v, rollout.velocities[rows, step], x_t, x_next, t, 1.0 / k, rollout.labels[idx], c.stepnft)


ALGORITHMS = {"ppo": PPO, "grpo": GRPO, "stepnft": StepNFT}


def make_algorithm(cfg: AlgoConfig) -> Algorithm:
    return ALGORITHMS[cfg.kind](cfg)
