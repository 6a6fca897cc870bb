"""python bench/update_scale.py outputs/libero_object_stepnft_s0/checkpoints/sft outputs/demos/libero_object_40ep_s0 --noise-level 0.5

How far one RL update moves a policy's actions, before any simulator runs: from a checkpoint and the demos it was
cloned from, sample Flow-SDE transitions (exploration at the last denoising step) on demo states, take one
π-StepNFT update (the trainer's own: 2 epochs of 128-row minibatches, AdamW, grad-norm clip 1.0) with labels
that are +/-1 at random (a noise-dominated gradient, which is what a real update mostly is), and print the RMS
change of the ODE actions on 512 demo states, in the model's normalised action units. Compare two tasks at the
same learning rate to see why one tolerates a step that breaks the other (docs/benchmarks.md, issue 14).

    python bench/update_scale.py outputs/pushcube_stepnft_s0/checkpoints/sft outputs/demos/pushcube_2ep_s0 --lr 3e-4 5e-5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pirl_robot.data.demos import load_demos  # noqa: E402
from pirl_robot.flow.sampler import ChainConfig  # noqa: E402
from pirl_robot.policy import Policy  # noqa: E402
from pirl_robot.rl.algorithms import AlgoConfig, StepNFT  # noqa: E402
from pirl_robot.rl.losses import StepNFTConfig  # noqa: E402
from pirl_robot.rl.rollout import Rollout  # noqa: E402
from pirl_robot.rl.trainer import Trainer  # noqa: E402


def action_change(policy: Policy, states: torch.Tensor, noise_level: float, lr: float, rows: int = 384,
                  seed: int = 0) -> torch.Tensor:
    """Per-action-dim RMS change of the ODE actions after one update at `lr` (the trainer's own update on
    `configs/algo/stepnft.yaml`'s epochs and minibatches)."""
    model = policy.model
    g = torch.Generator().manual_seed(seed)
    train = {"state": states[torch.randint(len(states), (rows,), generator=g)]}
    held = {"state": states[torch.randint(len(states), (512,), generator=g)]}
    k = policy.sampler.num_steps
    # exploration at the last denoising step only, as the issue 14 presets
    sde = ChainConfig(num_steps=k, mode="sde", noise_level=noise_level, first_stochastic_step=k - 1)
    ode = ChainConfig(num_steps=k, mode="ode")
    noise = torch.randn(512, model.chunk_size, model.action_dim, generator=g)
    before = policy.sample(held, ode, noise=noise)[0].actions
    chain = policy.sample(train, sde, generator=g)[0]
    zeros = torch.zeros(rows)
    rollout = Rollout(raw=train, xs=chain.xs, stochastic=chain.stochastic, velocities=chain.velocities,
                      feats_mean=chain.feats_mean, logp=chain.logp, values=zeros, advantages=zeros, returns=zeros,
                      labels=torch.where(torch.rand(rows, generator=g) < 0.5, 1.0, -1.0))
    rollout.step = StepNFT.training_steps(rollout, g)
    algo = AlgoConfig(kind="stepnft", chain=sde, stepnft=StepNFTConfig(noise_level=noise_level), update_epochs=2,
                      minibatch_size=128, actor_lr=lr)
    with tempfile.TemporaryDirectory() as out:  # the trainer writes nothing before a save
        Trainer(policy, env=None, algo=algo, out_dir=out, seed=seed, progress=False).update(rollout)
    after = policy.sample(held, ode, noise=noise)[0].actions
    return (after - before).pow(2).mean((0, 1)).sqrt()


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
        rms = action_change(Policy.load(args.checkpoint), states, args.noise_level, lr)  # a fresh copy per rate
        print(f"{lr:8.0e}  {rms.mean():7.4f}  {' '.join(f'{x:.3f}' for x in rms.tolist())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
