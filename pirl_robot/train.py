"""pirl train — few-shot SFT from simulated expert demos, then online RL of a flow policy, in one command.

    pirl train                                   # default: PushCube, state obs, flow MLP, Flow-SDE PPO
    pirl train algo=flow_noise_ppo               # Flow-Noise PPO
    pirl train algo=grpo seed=1 rl.iterations=80 # critic-free GRPO
    pirl train algo=stepnft                      # π-StepNFT
    pirl train env=maniskill_pickcube            # another task
    pirl train --cfg                             # print the composed config and exit

Writes to output_dir: config.yaml, metrics.jsonl, learning_curve.png, summary.json, checkpoints/{sft,last}.
Re-running the same command resumes from checkpoints/last after an interruption.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pirl_robot.config import run_verb, to_dataclass
from pirl_robot.flow.sampler import ChainConfig
from pirl_robot.models.factory import build_model
from pirl_robot.policy import Policy
from pirl_robot.rl.algorithms import AlgoConfig
from pirl_robot.rl.distributed import Dist, RankFailure
from pirl_robot.rl.sft import behaviour_clone
from pirl_robot.transforms import PolicyTransforms
from pirl_robot.rl.trainer import TRAIN_STATE, Trainer


def algo_config(cfg: DictConfig) -> AlgoConfig:
    d = OmegaConf.to_container(cfg.algo, resolve=True)
    d.pop("name", None)
    return to_dataclass(AlgoConfig, d, "algo")


def build_policy(cfg: DictConfig, spec, demos, device: str | None = None) -> Policy:
    from pirl_robot.data.demos import compute_stats

    stats = compute_stats(demos, spec, state_min_std=cfg.demos.state_min_std)
    model = build_model(cfg.policy.kind, OmegaConf.to_container(cfg.policy.model, resolve=True), spec)
    return Policy(spec=spec, model=model.to(device or cfg.device), transforms=PolicyTransforms(spec, stats["state"], stats["actions"]),
                  sampler=ChainConfig(num_steps=cfg.algo.chain.num_steps, mode="ode"), model_kind=cfg.policy.kind)


def run(cfg: DictConfig) -> dict:
    """The whole job; under torchrun every rank runs it (see pirl_robot/rl/distributed.py)."""
    dist = Dist.from_env(cfg.device)
    try:
        return _run(cfg, dist)
    except RankFailure as e:
        print(f"[rank {dist.rank}] {e}\n[rank {dist.rank}] the job stops; rerun the same command to resume from "
              f"{Path(cfg.output_dir) / 'checkpoints' / 'last'}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        dist.shutdown()


def _run(cfg: DictConfig, dist: Dist) -> dict:
    from sim import factory

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    algo = algo_config(cfg)
    device = dist.device(cfg.device)
    out = Path(cfg.output_dir)
    main = dist.is_main
    say = print if cfg.progress and main else (lambda *a, **k: None)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    t_start = time.perf_counter()

    spec = factory.env_spec(cfg.env)
    if main:  # one rank records the demos, the others wait and read them
        factory.ensure_demos(cfg.env, cfg.demos.episodes, Path(cfg.demos.root), seed=cfg.demos.seed,
                             progress=cfg.progress)
    dist.barrier()
    demo_root = factory.ensure_demos(cfg.env, cfg.demos.episodes, Path(cfg.demos.root), seed=cfg.demos.seed,
                                     progress=False)
    demos = factory.load_demos(demo_root, spec, cfg.env)
    data = demos.batch(slice(None))
    say(f"[demos] {demos.num_episodes} expert episodes at {demo_root} -> {len(demos)} training chunks")
    if dist.enabled:
        say(f"[dist] {dist.world_size} ranks, {cfg.env.num_envs} envs each ({cfg.env.get('sim_backend', 'cpu')})")

    # each rank its own envs and seed streams (rank 0: the single-process ones)
    env = factory.make_vector_env(cfg.env, seed=cfg.seed + 7919 * dist.rank, device=device)
    last = out / "checkpoints" / "last"
    resuming = bool(cfg.resume) and (last / TRAIN_STATE).exists()
    try:
        if resuming:
            policy = Policy.load(last, device=device)
            policy.sampler = ChainConfig(num_steps=algo.chain.num_steps, mode="ode")
        else:
            policy = build_policy(cfg, spec, demos, device)
        if not resuming:  # SFT runs on every rank (same data and seed); DDP / FSDP2 then start from rank 0's
            losses = behaviour_clone(policy, data, cfg.sft.steps, cfg.sft.batch_size, cfg.sft.lr, seed=cfg.seed,
                                     progress=cfg.progress and main)
            if main:  # before the Trainer (FSDP2) shards the weights
                (out / "metrics.jsonl").unlink(missing_ok=True)
                policy.save(out / "checkpoints" / "sft")
        trainer = Trainer(policy, env, algo, out, seed=cfg.seed, max_chunks=factory.max_chunks(cfg.env),
                          eval_episodes=cfg.eval.episodes, eval_every=cfg.eval.every, save_every=cfg.save_every,
                          progress=cfg.progress, dist=dist, shard=cfg.policy.kind in ("pi0", "pi05"))
        if resuming:
            trainer.load(last)
            say(f"[resume] from {last} at iteration {trainer.iteration} ({trainer.env_steps} env steps)")
            sft_eval = next(r for r in trainer.history if r.get("tag") == "sft")
        else:
            sft_eval = trainer.evaluate("sft")
            say(f"[sft] loss {losses[0]:.3f} -> {losses[-1]:.3f}; success {sft_eval['success_rate']:.3f} "
                f"over {sft_eval['episodes']} episodes")
        trainer.train(cfg.rl.iterations)
        final = trainer.evaluate("final", reuse=True)  # rl.iterations=0 or nothing left: no second run
    finally:
        env.close()
    summary = {
        "task": cfg.env.name, "policy": cfg.policy.kind, "algo": cfg.algo.name, "seed": cfg.seed,
        "sft_success": sft_eval["success_rate"], "sft_episodes": sft_eval["episodes"],
        "rl_success": final["success_rate"], "rl_episodes": final["episodes"], "rl_ci95": final["ci95"],
        "ranks": dist.world_size,
        "gain_points": 100 * (final["success_rate"] - sft_eval["success_rate"]),
        "iterations": trainer.iteration, "env_steps": trainer.env_steps,
        "wall_seconds_this_run": time.perf_counter() - t_start,
        "checkpoint": str(last),
    }
    if not main:
        return summary
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from pirl_robot.utils.plots import learning_curve

    learning_curve(out / "metrics.jsonl", out / "learning_curve.png", title=f"{cfg.env.name} {cfg.algo.name}")
    say(f"\nsuccess before RL (SFT): {100 * summary['sft_success']:.1f}% over {summary['sft_episodes']} episodes")
    lo, hi = final["ci95"]
    say(f"success after RL:        {100 * summary['rl_success']:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f}) over "
        f"{summary['rl_episodes']} episodes  ({summary['gain_points']:+.1f} points, {trainer.env_steps} env steps)")
    say(f"outputs: {out}/ (checkpoints/last, metrics.jsonl, learning_curve.png, summary.json)")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_verb("train", "train", __doc__, run, argv)
