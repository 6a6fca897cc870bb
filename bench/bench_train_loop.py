"""Training-loop throughput next to the bare simulator's, on the same task and the same number of envs.

    .venv/bin/python bench/bench_train_loop.py                       # PushCube state, 16 envs
    .venv/bin/python bench/bench_train_loop.py --envs 4 --chunks 8 --env maniskill_pickcube

Rows: the bare simulator (random joint targets, in-process single env and the chunked vector env), the
rollout collection of the training loop (policy sampling included), and whole RL iterations (collection +
PPO update). Goal: collection keeps >= 80% of the bare vector env's env-steps/s.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def bare_single(task_cfg, steps: int) -> float:
    from sim.maniskill.env import ManiSkillEnv

    env = ManiSkillEnv(task_cfg)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lo, hi = env.action_low, env.action_high
    t = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(rng.uniform(lo, hi).astype(np.float32))
        if term or trunc:
            env.reset()
    rate = steps / (time.perf_counter() - t)
    env.close()
    return rate


def bare_vector(env, spec, rounds: int) -> float:
    rng = np.random.default_rng(0)
    obs = env.reset(seeds=list(range(env.num_envs)))
    steps, t = 0, time.perf_counter()
    for _ in range(rounds):
        # Small random moves around the current joints keep the arm in a realistic regime.
        q = obs["state"][:, :7]
        a = np.concatenate([q[:, None, :] + rng.normal(0, 0.05, (env.num_envs, spec.exec_horizon, 7)),
                            rng.uniform(-1, 1, (env.num_envs, spec.exec_horizon, 1))], -1)
        res = env.step_chunk(a.astype(np.float32))
        obs, steps = res.obs, steps + int(res.steps.sum())
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="maniskill_pushcube")
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--chunks", type=int, default=8, help="chunk decisions per env per iteration")
    p.add_argument("--iterations", type=int, default=3)
    a = p.parse_args()

    from pirl_robot.config import compose
    from pirl_robot.models.factory import build_model
    from pirl_robot.policy import Policy
    from pirl_robot.rl.rollout import collect_steps
    from pirl_robot.rl.trainer import Trainer
    from pirl_robot.train import algo_config
    from pirl_robot.transforms import PolicyTransforms, Stats
    from sim import factory

    cfg = compose("train", [f"env={a.env}", f"env.num_envs={a.envs}", f"algo.chunks_per_env={a.chunks}"])
    spec = factory.env_spec(cfg.env)
    task_cfg = factory._maniskill_task(cfg.env)
    rows = [("bare sim, 1 env in-process", bare_single(task_cfg, 1500), "")]
    env = factory.make_vector_env(cfg.env, seed=0)
    try:
        rounds = a.chunks * a.iterations
        bare = bare_vector(env, spec, rounds)
        rows.append((f"bare ChunkVectorEnv, {a.envs} envs", bare, "100%"))
        model = build_model("flow_mlp", dict(cfg.policy.model), spec)
        stats = PolicyTransforms(spec, Stats(torch.zeros(spec.state_dim), torch.ones(spec.state_dim)),
                                 Stats(torch.zeros(spec.action_dim), torch.full((spec.action_dim,), 0.05)))
        policy = Policy(spec, model.eval(), stats)
        algo = algo_config(cfg)
        gen = torch.Generator().manual_seed(0)
        obs = env.reset(seeds=list(range(a.envs)))
        steps, t = 0, time.perf_counter()
        for _ in range(a.iterations):
            r, obs = collect_steps(policy, env, obs, a.chunks, algo.chain, gen, algo.gamma, algo.gae_lambda)
            steps += r.env_steps
        loop = steps / (time.perf_counter() - t)
        rows.append(("training loop: rollout collection", loop, f"{100 * loop / bare:.0f}%"))
        tr = Trainer(policy, env, algo, "/tmp/pirl_bench_loop", eval_every=0, save_every=0, progress=False)
        t = time.perf_counter()
        tr.train(a.iterations)
        full = tr.env_steps / (time.perf_counter() - t)
        rows.append(("training loop: collection + PPO update", full, f"{100 * full / bare:.0f}%"))
    finally:
        env.close()
    print(f"\n{a.env}: {a.envs} envs, chunk {spec.exec_horizon}, {a.chunks} chunks/env/iteration, "
          f"{a.iterations} iterations, torch threads {torch.get_num_threads()}")
    print(f"| {'what':<42} | {'env steps/s':>11} | {'of bare vector':>14} |")
    print(f"|{'-' * 44}|{'-' * 13}|{'-' * 16}|")
    for name, rate, rel in rows:
        print(f"| {name:<42} | {rate:>11.0f} | {rel:>14} |")


if __name__ == "__main__":
    main()
