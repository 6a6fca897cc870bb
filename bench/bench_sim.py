"""Simulator throughput: a bare ManiSkill env vs ChunkVectorEnv with N worker processes, in env-steps/s.

    nice .venv/bin/python bench/bench_sim.py                       # PushCube state, N = 1, 2, 4, chunk 8
    nice .venv/bin/python bench/bench_sim.py --workers 2 16        # 16 envs: 16 workers vs one per core
    nice .venv/bin/python bench/bench_sim.py --rgb 64 --seconds 5  # add rgb rows (64 px camera)
    nice .venv/bin/python bench/bench_sim.py --seconds 1 --workers 1 2   # quick smoke run

Numbers are only meaningful on a quiet machine: every worker competes for the same cores. Random actions are
uniform over the pd_joint_pos action box (joint limits, gripper [-1, 1]), as in ManiSkill's own speed checks.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sim.maniskill.config import TaskConfig  # noqa: E402
from sim.maniskill.env import ManiSkillEnv  # noqa: E402
from sim.maniskill.vector import ChunkVectorEnv  # noqa: E402


def bare_steps_per_s(cfg: TaskConfig, seconds: float) -> float:
    """The raw ManiSkill gym env (no adapter), one env, random actions, resets at episode end."""
    env = ManiSkillEnv(cfg)
    raw = env.env
    raw.reset(seed=0)
    raw.action_space.seed(0)
    for _ in range(5):  # warm-up
        raw.step(raw.action_space.sample())
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, term, trunc, _ = raw.step(raw.action_space.sample())
        steps += 1
        if bool(term.item()) or bool(trunc.item()):
            raw.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def chunk_steps_per_s(cfg: TaskConfig, n: int, chunk: int, seconds: float, in_process: bool,
                      num_workers: int | None = None) -> tuple[float, float]:
    """(env-steps/s, seconds to start the workers) of ChunkVectorEnv with random action chunks."""
    t0 = time.perf_counter()
    with ChunkVectorEnv(cfg, num_envs=n, seed=0, in_process=in_process, num_workers=num_workers) as venv:
        startup = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        low, high = _action_box(cfg)
        venv.reset()
        venv.step_chunk(rng.uniform(low, high, size=(n, chunk, len(low))))  # warm-up
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            res = venv.step_chunk(rng.uniform(low, high, size=(n, chunk, len(low))))
            steps += int(res.steps.sum())
        return steps / (time.perf_counter() - start), startup


def _action_box(cfg: TaskConfig) -> tuple[np.ndarray, np.ndarray]:
    env = ManiSkillEnv(TaskConfig(task=cfg.task))  # state obs: the action box does not depend on the cameras
    box = env.action_low, env.action_high
    env.close()
    return box


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="PushCube-v1")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement time per row")
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rgb", type=int, default=0, help="also measure rgb obs at this camera size (0: skip)")
    a = p.parse_args()
    modes = [("state", 64)] + ([("rgb", a.rgb)] if a.rgb else [])
    rows = []
    for obs_mode, size in modes:
        cfg = TaskConfig(task=a.task, obs_mode=obs_mode, image_size=size, chunk_size=a.chunk, exec_horizon=a.chunk)
        label = obs_mode if obs_mode == "state" else f"rgb {size}px"
        rows.append((label, "bare env (in-process)", bare_steps_per_s(cfg, a.seconds), 0.0))
        rows.append((label, "ChunkVectorEnv N=1 in-process",
                     *chunk_steps_per_s(cfg, 1, a.chunk, a.seconds, in_process=True)))
        cores = os.cpu_count() or 1
        for n in a.workers:
            rows.append((label, f"ChunkVectorEnv N={n}, {n} workers",
                         *chunk_steps_per_s(cfg, n, a.chunk, a.seconds, in_process=False)))
            if n > cores:  # the same envs packed into one worker per core
                rows.append((label, f"ChunkVectorEnv N={n}, {cores} workers",
                             *chunk_steps_per_s(cfg, n, a.chunk, a.seconds, in_process=False, num_workers=cores)))
    print(f"\n{a.task}, chunk {a.chunk}, {a.seconds:.0f} s per row, {os.cpu_count()} CPU cores, random actions\n")
    print("| obs | setup | env-steps/s | startup s |")
    print("|---|---|---:|---:|")
    for label, setup, rate, startup in rows:
        print(f"| {label} | {setup} | {rate:.0f} | {startup:.1f} |")


if __name__ == "__main__":
    main()
