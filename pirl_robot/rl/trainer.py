"""The RL loop: collect with the current policy, update, evaluate, log, checkpoint; resumable."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pirl_robot.flow.sampler import ChainConfig
from pirl_robot.policy import Policy
from pirl_robot.rl.algorithms import AlgoConfig, make_algorithm
from pirl_robot.rl.rollout import collect_episodes

TRAIN_STATE = "trainer_state.pt"


def evaluate(policy: Policy, env, episodes: int, seed_base: int, num_steps: int, max_chunks: int,
             noise_seed: int = 0) -> dict:
    """Success rate of the deterministic-ODE policy over `episodes` episodes with seeds seed_base + i."""
    gen = torch.Generator().manual_seed(noise_seed)
    cfg = ChainConfig(num_steps=num_steps, mode="ode")
    stats: list[dict] = []
    n = env.num_envs
    for start in range(0, episodes, n):
        seeds = [seed_base + start + i for i in range(n)]
        _, s = collect_episodes(policy, env, seeds, cfg, gen, max_chunks)
        stats += s[: episodes - start]
    succ = np.array([s["success"] for s in stats], float)
    return {"success_rate": float(succ.mean()), "episodes": len(stats),
            "ci95": float(1.96 * math.sqrt(max(succ.mean() * (1 - succ.mean()), 1e-12) / len(stats))),
            "mean_return": float(np.mean([s["return"] for s in stats])),
            "mean_length": float(np.mean([s["length"] for s in stats]))}


class Trainer:
    def __init__(self, policy: Policy, env, algo: AlgoConfig, out_dir: str | Path, seed: int = 0,
                 max_chunks: int = 64, eval_env=None, eval_episodes: int = 50, eval_every: int = 10,
                 save_every: int = 5, progress: bool = True):
        self.policy, self.env, self.cfg = policy, env, algo
        self.eval_env = eval_env or env
        self.algo = make_algorithm(algo)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.max_chunks, self.eval_episodes, self.eval_every, self.save_every = max_chunks, eval_episodes, eval_every, save_every
        self.progress = progress
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)
        self.iteration, self.env_steps, self._seed_cursor = 0, 0, 0
        self.history: list[dict] = []
        model = policy.model
        groups = [{"params": model.policy_parameters(), "lr": algo.actor_lr}]
        if self.algo.uses_critic:
            if not model.has_value_head:
                raise ValueError(f"{algo.kind} needs a value head; the model has none")
            groups.append({"params": model.value_parameters(), "lr": algo.critic_lr})
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.01)
        self.base_lrs = [g["lr"] for g in groups]  # the configured rates (a resumed optimizer keeps its last ones)
        self.obs = None

    # --- seeds: training episodes use a stream disjoint from evaluation seeds (which start at 10**6) ---------
    def next_seed(self, n: int) -> list[int]:
        out = [self.seed * 100_000 + self._seed_cursor + i for i in range(n)]
        self._seed_cursor += n
        return out

    def _log(self, row: dict) -> None:
        self.history.append(row)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def evaluate(self, tag: str) -> dict:
        r = evaluate(self.policy, self.eval_env, self.eval_episodes, 10**6, self.cfg.chain.num_steps,
                     self.max_chunks)
        if self.eval_env is self.env:
            self.obs = None  # evaluation reset the shared envs: training episodes must start afresh
        row = {"kind": "eval", "tag": tag, "iteration": self.iteration, "env_steps": self.env_steps, **r}
        self._log(row)
        return row

    def set_learning_rate(self, iterations: int) -> float:
        """Learning rates for the coming update (iteration self.iteration of `iterations`); returns the factor."""
        frac = 1.0 if self.cfg.lr_schedule == "constant" else max(0.0, 1.0 - self.iteration / max(iterations, 1))
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * frac
        return frac

    def update(self, rollout) -> dict:
        model, c = self.policy.model, self.cfg
        model.train()
        stats: dict[str, list[float]] = {}
        stop = False
        for _ in range(c.update_epochs):
            for idx in rollout.minibatches(c.minibatch_size, self.gen):
                loss, s = self.algo.loss(self, rollout, idx)
                if loss is None:
                    continue
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at iteration {self.iteration}: {s}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad = torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                                      c.max_grad_norm)
                self.optimizer.step()
                for k, v in {**s, "loss": loss.item(), "grad_norm": grad.item()}.items():
                    stats.setdefault(k, []).append(v)
                if c.target_kl is not None and s.get("approx_kl", 0.0) > c.target_kl:
                    stop = True
                    break
            if stop:
                break
        model.eval()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def train(self, iterations: int) -> list[dict]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.obs is None:
            self.obs = self.env.reset(seeds=self.next_seed(self.env.num_envs))
        bar = tqdm(total=iterations, initial=self.iteration, desc=f"RL {self.cfg.kind}", disable=not self.progress)
        while self.iteration < iterations:
            if self.obs is None:
                self.obs = self.env.reset(seeds=self.next_seed(self.env.num_envs))
            t0 = time.perf_counter()
            rollout = self.algo.collect(self)
            t_collect = time.perf_counter() - t0
            lr_frac = self.set_learning_rate(iterations)
            stats = self.update(rollout)
            self.iteration += 1
            self.env_steps += rollout.env_steps
            eps = rollout.episodes
            row = {"kind": "train", "iteration": self.iteration, "env_steps": self.env_steps,
                   "episodes": len(eps),
                   "success_rate": float(np.mean([e["success"] for e in eps])) if eps else float("nan"),
                   "mean_return": float(np.mean([e["return"] for e in eps])) if eps else float("nan"),
                   "collect_steps_per_s": rollout.env_steps / max(t_collect, 1e-9),
                   "iter_seconds": time.perf_counter() - t0, "lr_frac": lr_frac, **stats}
            self._log(row)
            bar.update(1)
            bar.set_postfix(succ=f"{row['success_rate']:.2f}", ret=f"{row['mean_return']:.2f}",
                            sps=f"{row['collect_steps_per_s']:.0f}")
            if self.eval_every and self.iteration % self.eval_every == 0 and self.iteration < iterations:
                e = self.evaluate(f"iter{self.iteration}")
                bar.write(f"[eval] iteration {self.iteration}: success {e['success_rate']:.3f} "
                          f"({e['episodes']} episodes)")
            if self.save_every and self.iteration % self.save_every == 0:
                self.save()
        bar.close()
        self.save()
        return self.history

    # --- checkpoints ---------------------------------------------------------------------------------------
    def save(self, tag: str = "last") -> Path:
        path = self.ckpt_dir / tag
        self.policy.save(path)
        state = {"iteration": self.iteration, "env_steps": self.env_steps, "seed_cursor": self._seed_cursor,
                 "optimizer": self.optimizer.state_dict(), "gen": self.gen.get_state(),
                 "torch_rng": torch.get_rng_state()}
        torch.save(state, path / (TRAIN_STATE + ".tmp"))
        (path / (TRAIN_STATE + ".tmp")).replace(path / TRAIN_STATE)
        return path

    def load(self, path: str | Path) -> None:
        """Resume: weights (strictly), optimizer, counters and RNG streams from a checkpoint directory."""
        from pirl_robot.checkpoint import WEIGHTS, load_state_dict_strict, load_weights

        path = Path(path)
        load_state_dict_strict(self.policy.model, load_weights(path / WEIGHTS), str(path / WEIGHTS))
        state = torch.load(path / TRAIN_STATE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]
        self._seed_cursor = state["seed_cursor"]
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        mfile = self.out_dir / "metrics.jsonl"
        if mfile.exists():  # keep only rows up to the resumed iteration; later ones are redone
            rows = [json.loads(x) for x in mfile.read_text().splitlines() if x.strip()]
            self.history = [r for r in rows if r["iteration"] <= self.iteration]
            mfile.write_text("".join(json.dumps(r) + "\n" for r in self.history))
