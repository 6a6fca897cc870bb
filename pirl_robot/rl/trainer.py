"""The RL loop: collect with the current policy, update, evaluate, log, checkpoint; resumable; one process or
several under torchrun (``pirl_robot.rl.distributed``).

    collect (each rank: its own envs and seeds) -> update (DDP averages the gradients) -> metrics reduced over
    ranks -> evaluation (each rank a share of the seeds, one pooled result) -> checkpoint (rank 0 writes)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pirl_robot.flow.sampler import ChainConfig
from pirl_robot.policy import Policy
from pirl_robot.rl.algorithms import SKIPPED, AlgoConfig, Algorithm, CollectContext, make_algorithm
from pirl_robot.rl.distributed import Dist, full_state, gathered, load_full_state, shard_trainable, wrap_ddp
from pirl_robot.rl.rollout import Rollout, num_minibatches

TRAIN_STATE = "trainer_state.pt"
EVAL_SEED_BASE = 10**6  # evaluation episodes use seeds from here on; training seeds stay below


class LossModule(torch.nn.Module):
    """The model plus the algorithm's minibatch loss as one forward, so DDP sees the whole loss computation."""

    def __init__(self, policy: Policy, algo: Algorithm):
        super().__init__()
        self.model, self.policy, self.algo = policy.model, policy, algo

    def forward(self, rollout: Rollout, idx: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return self.algo.loss(self.policy, rollout, idx)


class Trainer:
    def __init__(self, policy: Policy, env, algo: AlgoConfig, out_dir: str | Path, seed: int = 0,
                 max_chunks: int = 64, eval_env=None, eval_episodes: int = 50, eval_every: int = 10,
                 save_every: int = 5, progress: bool = True, dist: Dist = Dist(), shard: bool = False):
        """shard: under torchrun, FSDP2 over the trainable parts (pi0 / pi0.5) instead of DDP."""
        self.policy, self.env, self.cfg, self.dist = policy, env, algo, dist
        self.eval_env = eval_env or env
        self.algo = make_algorithm(algo)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.max_chunks, self.eval_episodes, self.eval_every, self.save_every = max_chunks, eval_episodes, eval_every, save_every
        self.progress = progress and dist.is_main
        self.seed = seed
        self.gen = self._generator(iteration=0)
        self.iteration, self.env_steps, self._seed_cursor = 0, 0, 0
        # RL wall time (collection, updates, evaluations) since the run's first iteration, across resumes
        self._wall_before, self._t0 = 0.0, time.perf_counter()
        self.history: list[dict] = []
        model = policy.model
        self.sharded = shard_trainable(model) if shard and dist.enabled else []  # before the optimizer sees params
        groups = [{"params": model.policy_parameters(), "lr": algo.actor_lr}]
        if self.algo.uses_critic:
            if not model.has_value_head:
                raise ValueError(f"{algo.kind} needs a value head; the model has none")
            groups.append({"params": model.value_parameters(), "lr": algo.critic_lr})
        loss = LossModule(policy, self.algo)
        self.learner = loss if self.sharded else wrap_ddp(loss, dist)
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.01)
        self.base_lrs = [g["lr"] for g in groups]  # the configured rates (a resumed optimizer keeps its last ones)

    def _generator(self, iteration: int) -> torch.Generator:
        """Sampling noise and minibatch order, on the policy's device; one stream per rank (rank 0 of a fresh
        run: the single-process stream)."""
        g = torch.Generator(device=self.policy.device)
        return g.manual_seed(self.seed if self.dist.rank == 0 and iteration == 0
                             else hash((self.seed, self.dist.rank, iteration)) % 2**63)

    # --- seeds: training episodes use a stream disjoint from evaluation seeds (which start at 10**6) ---------
    def next_seed(self, n: int) -> list[int]:
        """n fresh training seeds for this rank; ranks take disjoint slices of one global stream."""
        start = self.seed * 100_000 + self._seed_cursor + self.dist.rank * n
        self._seed_cursor += n * self.dist.world_size
        return list(range(start, start + n))

    def wall_seconds(self) -> float:
        return self._wall_before + time.perf_counter() - self._t0

    def _log(self, row: dict) -> None:
        self.history.append(row)
        if self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def evaluate(self, tag: str, reuse: bool = False) -> dict:
        """Success of the ODE policy on seeds 10**6 + i, shared out over the ranks and pooled (one Wilson CI).

        reuse: when the last evaluation scored these same weights (no update since) on as many episodes, log its
        result under `tag` instead of running it again; the ODE evaluation is a function of weights and seeds (up to
        float noise in the returns: the simulator remembers earlier episodes, bench/sim_history.py).
        """
        from pirl_robot.evaluate import run_episodes, task_stats

        last = next((r for r in reversed(self.history) if r["kind"] == "eval"), None)
        same = bool(last) and last["iteration"] == self.iteration and last["episodes"] == self.eval_episodes
        if reuse and self.dist.min_int(int(same)):  # every rank decides alike: the evaluation below is collective
            row = {**last, "tag": tag, "wall_s": self.wall_seconds(), "same_as": last["tag"]}
            self._log(row)
            return row
        d, n = self.dist, self.eval_episodes
        seeds = list(range(EVAL_SEED_BASE + d.rank, EVAL_SEED_BASE + n, d.world_size))
        with gathered(self.sharded):
            eps = run_episodes(self.policy, self.eval_env, seeds, self.policy.spec.instruction, self.max_chunks,
                               sampler=ChainConfig(num_steps=self.cfg.chain.num_steps, mode="ode")) if seeds else []
        eps = sorted((e for part in d.gather(eps) for e in part), key=lambda e: e["seed"])
        if self.eval_env is self.env:
            self.algo.restart()  # evaluation reset the shared envs: training episodes must start afresh
        r = task_stats(tag, self.policy.spec.instruction, eps)
        row = {"kind": "eval", "tag": tag, "iteration": self.iteration, "env_steps": self.env_steps,
               "wall_s": self.wall_seconds(),
               **{k: r[k] for k in ("success_rate", "episodes", "successes", "ci95", "mean_return")},
               "mean_length": float(np.mean([e["length"] for e in eps]))}
        self._log(row)
        return row

    def set_learning_rate(self, iterations: int) -> float:
        """Learning rates for the coming update (iteration self.iteration of `iterations`); returns the factor."""
        frac = 1.0 if self.cfg.lr_schedule == "constant" else max(0.0, 1.0 - self.iteration / max(iterations, 1))
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * frac
        return frac

    def update(self, rollout: Rollout) -> dict:
        model, c, d = self.policy.model, self.cfg, self.dist
        model.train()
        stats: dict[str, list[float]] = {}
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        stop = False
        for _ in range(c.update_epochs):
            count = d.min_int(num_minibatches(len(rollout), c.minibatch_size))  # DDP: equal steps on every rank
            for idx in rollout.minibatches(c.minibatch_size, self.gen, count):
                loss, s = self.learner(rollout, idx)
                skipped = bool(s.pop(SKIPPED, False))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at iteration {self.iteration}: {s}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP: gradients averaged over ranks here
                if d.enabled:
                    skipped = not d.any(not skipped)
                if skipped:
                    continue
                norms, grad = self._clip_gradients(params, c.max_grad_norm)
                self.optimizer.step()
                for k, v in {**s, "loss": loss.item(), "grad_norm": grad.item(), **norms}.items():
                    stats.setdefault(k, []).append(v)
                if c.target_kl is not None and d.any(s.get("approx_kl", 0.0) > c.target_kl):
                    stop = True
                    break
            if stop:
                break
        model.eval()
        return d.mean({k: float(np.mean(v)) for k, v in stats.items()})

    def _clip_gradients(self, params: list, max_norm: float) -> tuple[dict[str, float], torch.Tensor]:
        """One clip over all trainable parameters; returns the pre-clip norms of the actor's and the critic's
        parameter groups (which of the two sets the clip factor) and the total norm. The total is made of the
        group norms, so nothing is measured twice. Sharded (FSDP) parameters: torch's clip, total norm only."""
        if self.sharded:
            return {}, torch.nn.utils.clip_grad_norm_(params, max_norm)
        norms: dict[str, torch.Tensor] = {}
        for name, g in zip(("grad_norm_actor", "grad_norm_critic"), self.optimizer.param_groups):
            grads = [p.grad for p in g["params"] if p.grad is not None]
            if grads:
                norms[name] = torch.nn.utils.get_total_norm(grads)
        total = torch.nn.utils.get_total_norm(list(norms.values()))
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return {k: v.item() for k, v in norms.items()}, total

    def train(self, iterations: int) -> list[dict]:
        d = self.dist
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ctx = CollectContext(self.policy, self.env, self.gen, self.next_seed, self.max_chunks)
        bar = tqdm(total=iterations, initial=self.iteration, desc=f"RL {self.cfg.kind}", disable=not self.progress)
        while self.iteration < iterations:
            t0 = time.perf_counter()
            with gathered(self.sharded):  # ranks' episodes end at different chunks: no collectives inside
                rollout = self.algo.collect(ctx)
            t_collect = time.perf_counter() - t0
            lr_frac = self.set_learning_rate(iterations)
            stats = self.update(rollout)
            self.iteration += 1
            steps = d.sum_int(rollout.env_steps)
            self.env_steps += steps
            eps = [e for part in d.gather(rollout.episodes) for e in part]
            row = {"kind": "train", "iteration": self.iteration, "env_steps": self.env_steps,
                   "episodes": len(eps),
                   "success_rate": float(np.mean([e["success"] for e in eps])) if eps else float("nan"),
                   "mean_return": float(np.mean([e["return"] for e in eps])) if eps else float("nan"),
                   "collect_steps_per_s": steps / max(t_collect, 1e-9),
                   "iter_seconds": time.perf_counter() - t0, "lr_frac": lr_frac, **stats}
            if d.enabled:  # a cheap check that DDP kept the replicas identical
                checksum = float(sum(_full(p).detach().double().sum() for p in self.policy.model.parameters()))
                row.update(ranks=d.world_size, rank_param_sums=d.gather(checksum))
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

    # --- checkpoints: rank 0 writes, every rank reads; a checkpoint resumes on any number of ranks -------------
    def save(self, tag: str = "last") -> Path:
        from pirl_robot.checkpoint import save_policy

        path = self.ckpt_dir / tag
        weights, optim = full_state(self.policy.model, self.optimizer) if self.sharded else (None, None)
        if self.dist.is_main:
            save_policy(self.policy, path, state_dict=weights)
            state = {"iteration": self.iteration, "env_steps": self.env_steps, "seed_cursor": self._seed_cursor,
                     "wall_seconds": self.wall_seconds(),
                     "optimizer": optim or self.optimizer.state_dict(), "optimizer_by_name": bool(self.sharded),
                     "gen": self.gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "world_size": self.dist.world_size}
            torch.save(state, path / (TRAIN_STATE + ".tmp"))
            (path / (TRAIN_STATE + ".tmp")).replace(path / TRAIN_STATE)
        self.dist.barrier()  # no rank runs ahead of a checkpoint it might have to resume from
        return path

    def load(self, path: str | Path) -> None:
        """Resume: weights (strictly), optimizer, counters and RNG streams from a checkpoint directory. Rank 0
        of a run with the checkpoint's world size continues its exact streams; other ranks (or another world
        size) start streams derived from the seed, rank and iteration."""
        from pirl_robot.checkpoint import WEIGHTS, load_state_dict_strict, load_weights

        path = Path(path)
        weights = load_weights(path / WEIGHTS)
        state = torch.load(path / TRAIN_STATE, weights_only=True, map_location="cpu")
        optim = state["optimizer"]
        if self.sharded:
            if not state.get("optimizer_by_name"):
                optim = _optimizer_by_name(self.policy.model, self.optimizer, optim)
            load_full_state(self.policy.model, self.optimizer, weights, optim)
        else:
            load_state_dict_strict(self.policy.model, weights, str(path / WEIGHTS))
            if state.get("optimizer_by_name"):  # written by a sharded (FSDP2) run
                optim = _optimizer_by_index(self.policy.model, self.optimizer, optim)
            self.optimizer.load_state_dict(optim)
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]
        self._seed_cursor = state["seed_cursor"]
        self._wall_before, self._t0 = state.get("wall_seconds", 0.0), time.perf_counter()
        same_run = self.dist.is_main and state.get("world_size", 1) == self.dist.world_size
        try:
            if not same_run:
                raise ValueError("fresh stream")
            self.gen.set_state(state["gen"])
        except (ValueError, RuntimeError):  # another rank, world size or device: a stream of its own
            self.gen = self._generator(self.iteration)
        torch.set_rng_state(state["torch_rng"])
        mfile = self.out_dir / "metrics.jsonl"
        if mfile.exists():  # keep only rows up to the resumed iteration; later ones are redone
            rows = [json.loads(x) for x in mfile.read_text().splitlines() if x.strip()]
            self.history = [r for r in rows if r["iteration"] <= self.iteration]
            if self.dist.is_main:
                mfile.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.dist.barrier()


def _full(p: torch.Tensor) -> torch.Tensor:
    """A parameter as a whole tensor (FSDP2 holds DTensor shards: gathered, a collective)."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]


def _optimizer_by_index(model, optimizer, by_name: dict) -> dict:
    """A name-keyed optimizer state dict (FSDP2's full format) as torch.optim's index-keyed one."""
    groups, index = [], {}
    for g, names in zip(by_name["param_groups"], _param_names(model, optimizer)):
        for n in names:
            index[n] = len(index)
        groups.append({**g, "params": [index[n] for n in names]})
    return {"state": {index[n]: v for n, v in by_name["state"].items()}, "param_groups": groups}


def _optimizer_by_name(model, optimizer, by_index: dict) -> dict:
    """torch.optim's index-keyed optimizer state dict as the name-keyed one FSDP2's loader takes."""
    flat = [n for names in _param_names(model, optimizer) for n in names]
    groups = [{**g, "params": [flat[i] for i in g["params"]]} for g in by_index["param_groups"]]
    return {"state": {flat[i]: v for i, v in by_index["state"].items()}, "param_groups": groups}
