"""What std does a Flow-Noise policy's noise net give, per action dimension, at one denoising step?

    .venv/bin/python bench/noise_std.py outputs/pushcube_flow_noise_s2/checkpoints/sft \
        outputs/pushcube_flow_noise_s2/checkpoints/last --demos outputs/demos/pushcube_2ep_s2

Runs each checkpoint's ODE chain from seeded noise on the demo dataset's states, and at `--step` (default the last,
where the presets explore) prints the noise net's std averaged per action dimension, the entries' range, and how
much it varies across states. Used to read whether a run's learned exploration moved from its start (issue 14,
session 19: without the entropy bonus it hardly does).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pirl_robot.checkpoint import load_policy
from pirl_robot.flow.steps import time_grid
from pirl_robot.policy import Policy


def demo_states(root: str | Path) -> np.ndarray:
    """observation.state of every frame of a LeRobot-format dataset (its data/**/*.parquet)."""
    files = sorted(Path(root).glob("data/**/*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root}: no data/**/*.parquet (a LeRobot dataset, e.g. outputs/demos/<name>)")
    df = pd.concat([pd.read_parquet(f, columns=["observation.state"]) for f in files])
    return np.stack(df["observation.state"].to_numpy()).astype(np.float32)


@torch.no_grad()
def noise_stds(policy: Policy, states: np.ndarray, num_steps: int = 4, step: int | None = None,
               seed: int = 0) -> torch.Tensor:
    """The noise net's std (B, H, A) at denoising step `step` (default the last) of the ODE chain on `states`."""
    if not policy.model.has_noise_net:
        raise ValueError(f"{policy.model_kind} checkpoint has no noise net (not a Flow-Noise policy)")
    step = num_steps - 1 if step is None else step
    if not 0 <= step < num_steps:
        raise ValueError(f"step must be in [0, {num_steps}), got {step}")
    ctx = policy.encode(policy.to_batch({"state": states}))
    model, b = policy.model, len(states)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, model.chunk_size, model.action_dim, generator=g).to(policy.device)
    grid, d = time_grid(num_steps).to(policy.device), 1.0 / num_steps
    for k in range(step + 1):
        t = grid[k].expand(b)
        v, feats = model.velocity(ctx, x, t)
        if k == step:
            return model.noise_std(feats, t)
        x = x - d * v
    raise AssertionError("unreachable")


def main() -> None:
    head, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(usage=".venv/bin/python bench/noise_std.py CHECKPOINT... --demos DATASET",
                                description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="policy checkpoint directories (policy.json + model.safetensors)")
    p.add_argument("--demos", required=True, help="LeRobot dataset whose states to run on")
    p.add_argument("--num-steps", type=int, default=4, help="denoising steps K of the chain")
    p.add_argument("--step", type=int, default=None, help="which step's std (default K-1, the last)")
    args = p.parse_args()
    states = demo_states(args.demos)
    print(f"{len(states)} states from {args.demos}; step {args.step if args.step is not None else args.num_steps - 1}"
          f" of {args.num_steps}")
    print("| checkpoint | std per action dimension (mean over states and chunk) | entries min-max | spread across states |")
    print("|---|---|---|---|")
    for path in args.checkpoints:
        std = noise_stds(load_policy(path), states, args.num_steps, args.step)
        per_dim = " ".join(f"{s:.3f}" for s in std.mean((0, 1)).tolist())
        spread = std.std(0).mean().item() if len(states) > 1 else 0.0
        print(f"| {path} | {per_dim} | {std.min().item():.3f}-{std.max().item():.3f} | {spread:.3f} |")


if __name__ == "__main__":
    main()
