"""python bench/update_scale.py outputs/libero_object_stepnft_s0/checkpoints/sft outputs/demos/libero_object_40ep_s0 --noise-level 0.5

How far one RL update moves a policy's actions, before any simulator runs: from a checkpoint and the demos it was
cloned from, sample Flow-SDE transitions (exploration at the last denoising step) on demo states, take one
π-StepNFT update (2 epochs of 128-row minibatches, AdamW as the trainer builds it, grad-norm clip 1.0) with labels
that are +/-1 at random (a noise-dominated gradient, which is what a real update mostly is), and print the RMS
change of the ODE actions on 512 demo states, in the model's normalised action units. Compare two tasks at the
same learning rate to see why one tolerates a step that breaks the other (docs/benchmarks.md, issue 14).

    python bench/update_scale.py outputs/pushcube_stepnft_s0/checkpoints/sft outputs/demos/pushcube_2ep_s0 --lr 3e-4 5e-5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pirl_robot.data.demos import load_demos  # noqa: E402
from pirl_robot.flow.sampler import ChainConfig, sample_chain  # noqa: E402
from pirl_robot.flow.steps import time_grid  # noqa: E402
from pirl_robot.policy import Policy  # noqa: E402
from pirl_robot.rl.losses import StepNFTConfig, stepnft_loss  # noqa: E402


def action_change(policy: Policy, states: torch.Tensor, noise_level: float, lr: float, rows: int = 384,
                  minibatch: int = 128, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Per-action-dim RMS change of the ODE actions after one update at `lr`, and the last gradient norm."""
    model = policy.model
    g = torch.Generator().manual_seed(seed)
    train = states[torch.randint(len(states), (rows,), generator=g)]
    held = states[torch.randint(len(states), (512,), generator=g)]
    k = policy.sampler.num_steps
    step = k - 1  # the one stochastic step, as the issue 14 presets explore
    noise = torch.randn(len(held), model.chunk_size, model.action_dim, generator=g)
    ode = ChainConfig(num_steps=k, mode="ode")
    sde = ChainConfig(num_steps=k, mode="sde", noise_level=noise_level, first_stochastic_step=step)
    with torch.no_grad():
        before = sample_chain(model, policy.encode({"state": held}), ode, noise=noise).actions
        chain = sample_chain(model, policy.encode({"state": train}), sde, generator=g)
    labels = torch.where(torch.rand(rows, generator=g) < 0.5, 1.0, -1.0)
    params = model.policy_parameters()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    cfg = StepNFTConfig(noise_level=noise_level)
    t = time_grid(k)[step]
    model.train()
    for _ in range(2):
        for j in torch.randperm(rows, generator=g).split(minibatch):
            x_t = chain.xs[j, step]
            v, _ = model.velocity(policy.encode({"state": train[j]}), x_t, t.expand(len(j)))
            loss, _ = stepnft_loss(v, chain.velocities[j, step], x_t, chain.xs[j, step + 1], t.expand(len(j)),
                                   1.0 / k, labels[j], cfg)
            opt.zero_grad()
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            opt.step()
    model.eval()
    with torch.no_grad():
        after = sample_chain(model, policy.encode({"state": held}), ode, noise=noise).actions
    return (after - before).pow(2).mean((0, 1)).sqrt(), grad_norm


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a policy directory (pirl train's checkpoints/sft)")
    p.add_argument("demos", type=Path, help="the LeRobotDataset of demos the policy was cloned from")
    p.add_argument("--noise-level", type=float, default=1.0, help="Flow-SDE's a of the rollouts")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-4, 5e-5, 1e-5, 5e-6])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{args.checkpoint}, a = {args.noise_level}: RMS change of the ODE actions after one update "
          "(normalised action units)")
    print(f"{'lr':>8}  {'mean':>7}  per action dim")
    spec = Policy.load(args.checkpoint).spec
    states = load_demos(args.demos, chunk_size=spec.chunk_size, spec=spec).batch(slice(None))["state"].float()
    for lr in args.lr:
        rms, _ = action_change(Policy.load(args.checkpoint), states, args.noise_level, lr)  # a fresh copy per rate
        print(f"{lr:8.0e}  {rms.mean():7.4f}  {' '.join(f'{x:.3f}' for x in rms.tolist())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
