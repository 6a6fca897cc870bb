"""What std does a Flow-Noise policy's noise net give, per action dimension, at one denoising step?

    .venv/bin/python bench/noise_std.py outputs/pushcube_flow_noise_s2/checkpoints/sft \
        outputs/pushcube_flow_noise_s2/checkpoints/last --demos outputs/demos/pushcube_2ep_s2

Runs each checkpoint's deployment (ODE) chain from seeded noise on the demo dataset's states, and at `--step`
(default the last, where the presets explore) prints the noise net's std averaged per action dimension, the
entries' range, and how much it varies across states. Used to read whether a run's learned exploration moved from
its start (issue 14, session 19: without the entropy bonus it hardly does).
"""

from __future__ import annotations

import argparse

import torch

from pirl_robot.checkpoint import load_policy
from pirl_robot.data.demos import load_demos
from pirl_robot.flow.sampler import sample_chain
from pirl_robot.flow.steps import time_grid
from pirl_robot.policy import Policy


@torch.no_grad()
def noise_stds(policy: Policy, states: torch.Tensor, step: int | None = None, seed: int = 0) -> torch.Tensor:
    """The noise net's std (B, H, A) at denoising step `step` (default the last) of `policy`'s ODE chain on
    `states`."""
    if not policy.model.has_noise_net:
        raise ValueError(f"{policy.model_kind} checkpoint has no noise net (not a Flow-Noise policy)")
    num_steps = policy.sampler.num_steps
    step = num_steps - 1 if step is None else step
    if not 0 <= step < num_steps:
        raise ValueError(f"step must be in [0, {num_steps}), got {step}")
    ctx = policy.encode({"state": states})
    noise = torch.randn(len(states), *policy.noise_shape, generator=torch.Generator().manual_seed(seed))
    chain = sample_chain(policy.model, ctx, policy.sampler, noise=noise)
    t = time_grid(num_steps)[step].expand(len(states))
    _, feats = policy.model.velocity(ctx, chain.xs[:, step], t)
    return policy.model.noise_std(feats, t)


def main() -> None:
    head, rest = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(usage=".venv/bin/python bench/noise_std.py CHECKPOINT... --demos DATASET",
                                description=head, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="policy checkpoint directories (policy.json + model.safetensors)")
    p.add_argument("--demos", required=True, help="LeRobot dataset whose states to run on")
    p.add_argument("--step", type=int, default=None, help="which step's std (default the chain's last)")
    args = p.parse_args()
    print("| checkpoint | std per action dimension (mean over states and chunk) | entries min-max | spread across states |")
    print("|---|---|---|---|")
    for path in args.checkpoints:
        policy = load_policy(path)
        states = torch.as_tensor(load_demos(args.demos, chunk_size=policy.model.chunk_size).state)
        std = noise_stds(policy, states, args.step)
        per_dim = " ".join(f"{s:.3f}" for s in std.mean((0, 1)).tolist())
        spread = std.std(0).mean().item() if len(states) > 1 else 0.0
        print(f"| {path} | {per_dim} | {std.min().item():.3f}-{std.max().item():.3f} | {spread:.3f} |")


if __name__ == "__main__":
    main()
