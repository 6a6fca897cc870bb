"""Does a ManiSkill CPU env replay an episode exactly from reset(seed) and the same actions, whatever ran before?

    .venv/bin/python bench/sim_history.py                   # PushCube, 4 seeds, 3 episodes in between
    .venv/bin/python bench/sim_history.py --seeds 8 --between 1

For each seed, one episode runs three times on one env with the same action sequence: first, again right after,
and again after `--between` episodes with other seeds. Two action sequences: "random" (uniform over the
pd_joint_pos box, as in ManiSkill's speed checks: hard contacts, the gripper opening and closing) and "smooth" (a
small sinusoid around the start pose, gripper open: no contact). The table gives the largest state difference
and the return difference against the first run. Nonzero rows mean the simulator carries state across
reset(seed) (which part of PhysX or ManiSkill holds it is not pinned down): a training run whose envs also run
evaluation episodes then depends, down to float rounding, on what those evaluations did (docs/benchmarks.md,
issue 14, session 18).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from sim.maniskill.config import TaskConfig  # noqa: E402
from sim.maniskill.env import ManiSkillEnv  # noqa: E402


def episode(env: ManiSkillEnv, seed: int, actions: np.ndarray) -> tuple[np.ndarray, float]:
    """States (T+1, S) and return of one episode from reset(seed) under `actions` (stops at the episode's end)."""
    obs, _ = env.reset(seed=seed)
    states, ret = [obs["state"]], 0.0
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        states.append(obs["state"])
        ret += r
        if term or trunc:
            break
    return np.stack(states), ret


def action_sequences(env: ManiSkillEnv, seed: int, steps: int) -> dict[str, np.ndarray]:
    space = env.env.action_space
    rng = np.random.default_rng(seed)
    random = rng.uniform(space.low, space.high, size=(steps, space.shape[0])).astype(np.float32)
    q0 = env.reset(seed=seed)[0]["state"][:7]
    t = np.arange(steps)[:, None]
    smooth = np.concatenate([q0 + 0.05 * np.sin(0.3 * t + np.arange(7)), np.ones((steps, 1))], 1).astype(np.float32)
    return {"random": random, "smooth": smooth}


def diff(a: tuple[np.ndarray, float], b: tuple[np.ndarray, float]) -> tuple[float, float]:
    n = min(len(a[0]), len(b[0]))
    return float(np.abs(a[0][:n] - b[0][:n]).max()), abs(a[1] - b[1])


def main() -> None:
    head, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(usage=".venv/bin/python bench/sim_history.py [--seeds 4] [--between 3]",
                                description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="PushCube-v1")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--between", type=int, default=3, help="episodes with other seeds before the third run")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    env = ManiSkillEnv(TaskConfig(task=args.task, max_episode_steps=args.steps))
    print(f"{args.task}, {args.steps} steps; max |state difference| and |return difference| against the first run")
    print(f"| seed | actions | run again at once | after {args.between} other episodes |")
    print("|---|---|---|---|")
    for seed in range(args.seeds):
        for kind, actions in action_sequences(env, seed, args.steps).items():
            first = episode(env, seed, actions)
            again = episode(env, seed, actions)
            for k in range(args.between):
                episode(env, 10**6 + 100 * seed + k, actions)
            later = episode(env, seed, actions)
            (s1, r1), (s2, r2) = diff(first, again), diff(first, later)
            print(f"| {seed} | {kind} | {s1:.3g} / {r1:.3g} | {s2:.3g} / {r2:.3g} |")
    env.close()


if __name__ == "__main__":
    main()
