"""pirl eval — success rates of a checkpoint or a deploy bundle in simulation, per task and per suite.

    pirl eval outputs/run/checkpoints/last env=libero_object                     # the env config's task(s)
    pirl eval PATH env=libero_object 'env.libero.task_ids=[0,1,2,3,4,5,6,7,8,9]'  # a whole suite
    pirl eval bundles/pick env=maniskill_pickcube episodes=100 num_envs=8        # a bundle, a ManiSkill task
    pirl eval PATH env=libero_object video.dir=outputs/eval/videos video.episodes=2
    pirl eval PATH env=maniskill_pushcube rerun.dir=outputs/eval/rrd rerun.episodes=2  # Rerun, as the robot's view
    pirl eval --cfg                                                              # print the config

PATH (or checkpoint=PATH) is a checkpoint directory (policy.json) or an exported bundle (manifest.json).

Episodes start from seeds seed_base, seed_base + 1, ...; on LIBERO seed i is standard init state i (mod 50), so
the default 50 episodes per task visit each standard init state once (the LIBERO protocol). Actions come from
the deterministic ODE sampler (the deployment sampler), each episode's initial noise drawn from (noise_seed, its
seed), so a score does not depend on num_envs or on the batch an episode ran in; `sampler.mode=sde`
(with sampler.noise_level, sampler.first_stochastic_step) evaluates an RL rollout sampler instead. Each task gets its
success rate with a 95% Wilson interval; the suite line pools all episodes (tasks have equal counts, so this
is also the mean over tasks). Writes results.json and results.md to output_dir.

Hook for other outputs (Rerun, ...): pass ``observers`` to ``evaluate_policy``; each gets ``on_task_start``,
``on_chunk`` (observations, actions, ChunkResult) and ``on_task_end`` (the task's stats), in the main process.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pirl_robot.config import ConfigError, run_verb

if TYPE_CHECKING:
    from pirl_robot.flow.sampler import ChainConfig


class EpisodeObserver(Protocol):
    def on_task_start(self, task: str, instruction: str, seeds: Sequence[int]) -> None: ...

    def on_chunk(self, task: str, obs: dict, actions: np.ndarray, result: Any, active: np.ndarray) -> None: ...

    def on_task_end(self, task: str, stats: dict) -> None: ...


class PolicyLoadError(RuntimeError):
    """The path is neither a loadable checkpoint nor a valid bundle."""


def load_any(path: str | Path, device: str = "cpu"):
    """A Policy from a checkpoint directory (policy.json) or a deploy bundle (manifest.json)."""
    from pirl_robot.checkpoint import POLICY_JSON, CheckpointError, load_policy

    path = Path(path)
    if (path / "manifest.json").is_file():
        from pirl_robot.bundle import BundleError, load_bundle

        try:
            return load_bundle(path, device=device)
        except BundleError as e:
            raise PolicyLoadError(str(e)) from e
    if (path / POLICY_JSON).is_file():
        try:
            return load_policy(path, device=device)
        except (CheckpointError, ValueError, KeyError, TypeError) as e:
            raise PolicyLoadError(f"cannot load the checkpoint at {path}: {e}") from e
    raise PolicyLoadError(f"{path} is neither a policy checkpoint ({POLICY_JSON}) nor a bundle (manifest.json)")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sensible at 0 / n and n / n, unlike the normal one): the
    one confidence interval of training evaluations, `pirl eval`, HIL and `pirl report`."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def run_episodes(policy, venv, seeds: Sequence[int], instruction: str, max_chunks: int, noise_seed: int = 0,
                 task: str = "", observers: Sequence[EpisodeObserver] = (),
                 sampler: ChainConfig | None = None) -> list[dict]:
    """One episode per seed, `venv.num_envs` at a time; stats in seed order. The one way an episode is run and
    judged, for `pirl eval` and for the trainer's evaluations: actions from `sampler` (default the policy's own,
    the deterministic ODE) and each episode's initial chain noise from its own generator, seeded by
    (`noise_seed`, the episode's seed): an episode's result does not depend on `venv.num_envs`, on its place in
    the batch or on how seeds are shared out over ranks (an SDE sampler's later noise still comes from one shared
    generator). Success = the episode's ``EpisodeStats.success`` (the task's success flag at some step; episodes
    end at the first success). Works on the worker-process envs (numpy) and on the batched env (tensors on the
    policy's device)."""
    from pirl_robot.rl.rollout import obs_to_raw

    gen = torch.Generator(device=policy.device).manual_seed(noise_seed)
    n, horizon = venv.num_envs, policy.spec.exec_horizon
    shape = (policy.model.chunk_size, policy.model.action_dim)
    out: list[dict] = []
    for start in range(0, len(seeds), n):
        batch = list(seeds[start:start + n])
        active = np.arange(n) < len(batch)
        padded = batch + [batch[-1]] * (n - len(batch))  # spare envs idle on a repeat seed
        obs = venv.reset(seeds=padded)
        noise_gens = [episode_noise_generator(noise_seed, s, policy.device) for s in padded]
        ret, length, success = np.zeros(n), np.zeros(n, int), np.zeros(n, bool)
        for _ in range(max_chunks):
            raw = {**obs_to_raw(obs, policy.device), "instruction": [instruction] * n}
            noise = torch.stack([torch.randn(shape, generator=g, device=policy.device) for g in noise_gens])
            _, actions = policy.sample(raw, cfg=sampler, noise=noise, generator=gen)
            actions = actions[:, :horizon].float()
            if not bool(torch.isfinite(actions).all()):
                raise FloatingPointError(f"{task}: the policy produced NaN/inf actions")
            res = venv.step_chunk(actions.to(venv.device), active=active)
            for o in observers:
                o.on_chunk(task, obs, actions.cpu().numpy(), res, active.copy())
            ret[active] += _host(res.reward)[active]
            length[active] += _host(res.steps)[active]
            for e in res.episodes:
                success[e.env_index] = e.success
            active &= ~(_host(res.done) & active)
            obs = res.obs
            if not active.any():
                break
        if active.any():
            raise RuntimeError(f"{task}: {int(active.sum())} episodes did not end within {max_chunks} chunks")
        out += [{"seed": int(s), "success": bool(success[i]), "length": int(length[i]), "return": float(ret[i])}
                for i, s in enumerate(batch)]
    return out


def episode_noise_generator(noise_seed: int, episode_seed: int, device) -> torch.Generator:
    """The generator of one evaluation episode's initial chain noise: a function of the two seeds only."""
    state = int(np.random.SeedSequence([noise_seed, episode_seed]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


def _host(x) -> np.ndarray:
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def task_stats(label: str, instruction: str, episodes: list[dict]) -> dict:
    k, n = sum(e["success"] for e in episodes), len(episodes)
    lo, hi = wilson_interval(k, n)
    ok = [e["length"] for e in episodes if e["success"]]
    return {"task": label, "instruction": instruction, "episodes": n, "successes": k, "success_rate": k / max(n, 1),
            "ci95": [lo, hi], "mean_length_success": float(np.mean(ok)) if ok else None,
            "mean_return": float(np.mean([e["return"] for e in episodes])) if episodes else 0.0,
            "seeds": [e["seed"] for e in episodes], "success_by_seed": [e["success"] for e in episodes]}


def evaluate_policy(policy, env_cfg: DictConfig, episodes: int, seed_base: int = 0, num_envs: int | None = None,
                    noise_seed: int = 0, video: dict | None = None, observers: Sequence[EpisodeObserver] = (),
                    log=print) -> dict:
    """Per-task and pooled success of `policy` on every task of `env_cfg` (see the module docstring)."""
    from sim import factory

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    tasks, rows = factory.eval_tasks(env_cfg), []
    env_spec = factory.env_spec(tasks[0][1])
    policy.spec.check_compatible(env_spec, what=f"{env_cfg.name} env")
    n = min(num_envs or env_cfg.num_envs, episodes)
    seeds = list(range(seed_base, seed_base + episodes))
    chunks = math.ceil(factory.max_episode_steps(env_cfg) / policy.spec.exec_horizon) + 1  # the policy's horizon
    kwargs = {}
    if video and video.get("dir"):
        if env_cfg.simulator != "libero":
            raise ValueError("video output is implemented for LIBERO envs only")
        kwargs = dict(video_dir=video["dir"], video_episodes=video.get("episodes", 1),
                      video_size=video.get("size", 256))
    t0 = time.perf_counter()
    for label, one in tasks:
        instruction = factory.env_spec(one).instruction
        for o in observers:
            o.on_task_start(label, instruction, seeds)
        venv = factory.make_vector_env(one, seed=seed_base, num_envs=n, device=str(policy.device), **kwargs)
        try:
            eps = run_episodes(policy, venv, seeds, instruction, chunks, noise_seed, label, observers)
        finally:
            venv.close()
        row = task_stats(label, instruction, eps)
        rows.append(row)
        for o in observers:
            o.on_task_end(label, row)
        log(f"[eval] {label}: {row['successes']}/{row['episodes']} ({100 * row['success_rate']:.1f}%)  "
            f"{instruction}")
    total = {k: sum(r[k] for r in rows) for k in ("episodes", "successes")}
    lo, hi = wilson_interval(total["successes"], total["episodes"])
    suite = {"suite": str(env_cfg.name), "tasks": len(rows), **total,
             "success_rate": total["successes"] / total["episodes"], "ci95": [lo, hi],
             "mean_task_success": float(np.mean([r["success_rate"] for r in rows])),
             "wall_seconds": time.perf_counter() - t0}
    return {"suite": suite, "tasks": rows}


def results_table(results: dict) -> str:
    """Markdown table: one row per task, then the pooled suite row."""
    lines = ["| task | instruction | success | episodes | 95% CI |", "|---|---|---|---|---|"]
    for r in results["tasks"]:
        lines.append(f"| {r['task']} | {r['instruction']} | {100 * r['success_rate']:.1f}% | {r['episodes']} | "
                     f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}% |")
    s = results["suite"]
    lines.append(f"| **{s['suite']}** ({s['tasks']} tasks) | | **{100 * s['success_rate']:.1f}%** | {s['episodes']} | "
                 f"{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f}% |")
    return "\n".join(lines)


def eval_sampler(saved: ChainConfig, override) -> ChainConfig:
    """The sampler to evaluate with: the policy's own (ODE, its step count) unless `override` (the eval config's
    sampler section) asks for another mode; unknown keys or bad values give a ConfigError."""
    from pirl_robot.config import to_dataclass
    from pirl_robot.flow.sampler import ChainConfig

    if isinstance(override, DictConfig):
        override = OmegaConf.to_container(override, resolve=True)
    override = dict(override or {})
    return to_dataclass(ChainConfig, {**asdict(saved), **override}, "sampler")


def run(cfg: DictConfig) -> dict:
    torch.manual_seed(cfg.noise_seed)
    policy = load_any(cfg.checkpoint)
    policy.sampler = eval_sampler(policy.sampler, cfg.get("sampler"))
    out = Path(cfg.output_dir)
    observers = []
    if cfg.get("rerun") and cfg.rerun.get("dir"):  # the deploy view's Rerun layout, one .rrd per episode
        from pirl_robot.record.sim_eval import RerunEvalObserver

        observers.append(RerunEvalObserver(cfg.rerun.dir, policy.spec, cfg.rerun.get("episodes")))
    results = evaluate_policy(policy, cfg.env, cfg.episodes, seed_base=cfg.seed_base, num_envs=cfg.num_envs,
                              noise_seed=cfg.noise_seed, video=OmegaConf.to_container(cfg.video, resolve=True),
                              observers=observers, log=print if cfg.progress else (lambda *a: None))
    results["checkpoint"] = str(cfg.checkpoint)
    results["sampler"] = asdict(policy.sampler)
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = results_table(results)
    (out / "results.md").write_text(f"# {cfg.env.name}: {cfg.checkpoint}\n\n{table}\n")
    print(table)
    print(f"results: {out}/results.json, results.md")
    return results


def _require_checkpoint(cfg) -> None:
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("a checkpoint directory or bundle is required: pirl eval PATH [overrides]")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):  # the positional PATH
        argv = [f"checkpoint={argv[0]}"] + argv[1:]
    return run_verb("eval", "eval", __doc__, run, argv, errors=(PolicyLoadError,), check=_require_checkpoint)
