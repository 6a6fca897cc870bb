"""python bench/velocity_drift.py outputs/pushcube_stepnft_s1:outputs/demos/pushcube_2ep_s1

How far RL moved a flow policy from its SFT start, step by step along the denoising chain: on the demo states,
run the SFT checkpoint's ODE chain from fixed noise and, at each of its K points (x_k, t_k), compare the RL
checkpoint's velocity with the SFT one (RMS of the change over the RMS of the SFT velocity). The last column
is the RMS change of the ODE actions themselves, in the model's normalised action units. Runs that explore and
train only the last step (t = 1/K) show whether the untrained steps moved with it (docs/benchmarks.md, issue 14).

    python bench/velocity_drift.py outputs/pushcube_stepnft_s1:outputs/demos/pushcube_2ep_s1 \\
        outputs/pushcube_flow_noise_s0:outputs/demos/pushcube_2ep_s0      # RUN_DIR:DEMO_DIR, any number
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pirl_robot.checkpoint import load_policy  # noqa: E402
from pirl_robot.data.demos import load_demos  # noqa: E402
from pirl_robot.flow.steps import time_grid  # noqa: E402
from pirl_robot.policy import Policy  # noqa: E402


@torch.no_grad()
def velocity_drift(start: Policy, tuned: Policy, states: torch.Tensor, num_steps: int = 4,
                   seed: int = 0) -> tuple[list[float], float]:
    """Relative velocity change at each step of `start`'s ODE chain, and the RMS change of the ODE actions."""
    ctx_start, ctx_tuned = start.encode({"state": states}), tuned.encode({"state": states})
    noise = torch.randn(len(states), *start.noise_shape, generator=torch.Generator().manual_seed(seed))
    grid, d = time_grid(num_steps), 1.0 / num_steps
    x_start, x_tuned, per_step = noise.clone(), noise.clone(), []
    for k in range(num_steps):
        t = grid[k].expand(len(states))
        v_start, _ = start.model.velocity(ctx_start, x_start, t)
        v_tuned, _ = tuned.model.velocity(ctx_tuned, x_start, t)  # the same point of the SFT chain
        per_step.append(((v_tuned - v_start).pow(2).mean().sqrt() / v_start.pow(2).mean().sqrt()).item())
        x_tuned = x_tuned - d * tuned.model.velocity(ctx_tuned, x_tuned, t)[0]
        x_start = x_start - d * v_start
    return per_step, (x_tuned - x_start).pow(2).mean().sqrt().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="RUN_DIR:DEMO_DIR (RUN_DIR holds checkpoints/sft and checkpoints/last)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps K of the chain (the runs' algo.chain.num_steps)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    grid = time_grid(args.steps)[:-1].tolist()  # the K points the chain evaluates v at
    print(f"| run | relative velocity change at t = {', '.join(f'{t:.2f}' for t in grid)} | ODE action change |")
    print("|---|---|---|")
    for spec in args.runs:
        run, sep, demos = spec.partition(":")
        if not sep:
            p.error(f"{spec!r}: expected RUN_DIR:DEMO_DIR")
        start, tuned = load_policy(Path(run) / "checkpoints/sft"), load_policy(Path(run) / "checkpoints/last")
        states = torch.as_tensor(load_demos(demos, chunk_size=start.model.chunk_size).state)
        per_step, actions = velocity_drift(start, tuned, states, args.steps)
        print(f"| {Path(run).name} | {' '.join(f'{x:.3f}' for x in per_step)} | {actions:.3f} |")


if __name__ == "__main__":
    main()
