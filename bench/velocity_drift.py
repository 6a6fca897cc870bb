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
from pirl_robot.flow.sampler import sample_chain  # noqa: E402
from pirl_robot.flow.steps import time_grid  # noqa: E402
from pirl_robot.policy import Policy  # noqa: E402


@torch.no_grad()
def velocity_drift(start: Policy, tuned: Policy, states: torch.Tensor, seed: int = 0) -> tuple[list[float], float]:
    """Relative velocity change at each step of `start`'s ODE chain (its deployment sampler), and the RMS change
    of the ODE actions."""
    def rms(x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).mean().sqrt()

    ctx_start, ctx_tuned = start.encode({"state": states}), tuned.encode({"state": states})
    noise = torch.randn(len(states), *start.noise_shape, generator=torch.Generator().manual_seed(seed))
    sft = sample_chain(start.model, ctx_start, start.sampler, noise=noise)
    rl = sample_chain(tuned.model, ctx_tuned, start.sampler, noise=noise)
    grid, per_step = time_grid(start.sampler.num_steps), []
    for k in range(start.sampler.num_steps):  # the tuned velocity at the SFT chain's own points
        v_tuned, _ = tuned.model.velocity(ctx_tuned, sft.xs[:, k], grid[k].expand(len(states)))
        per_step.append((rms(v_tuned - sft.velocities[:, k]) / rms(sft.velocities[:, k])).item())
    return per_step, rms(rl.xs[:, -1] - sft.xs[:, -1]).item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="RUN_DIR:DEMO_DIR (RUN_DIR holds checkpoints/sft and checkpoints/last)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | relative velocity change at each denoising step, t = 1 first | ODE action change |")
    print("|---|---|---|")
    for spec in args.runs:
        run, sep, demos = spec.partition(":")
        if not sep:
            p.error(f"{spec!r}: expected RUN_DIR:DEMO_DIR")
        start, tuned = load_policy(Path(run) / "checkpoints/sft"), load_policy(Path(run) / "checkpoints/last")
        states = torch.as_tensor(load_demos(demos, chunk_size=start.model.chunk_size).state)
        per_step, actions = velocity_drift(start, tuned, states)
        print(f"| {Path(run).name} | {' '.join(f'{x:.3f}' for x in per_step)} | {actions:.3f} |")


if __name__ == "__main__":
    main()
