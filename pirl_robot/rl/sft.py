"""Few-shot supervised start: behaviour cloning of demonstration chunks with the flow-matching loss."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pirl_robot.flow.sampler import flow_matching_loss
from pirl_robot.policy import Policy


def behaviour_clone(policy: Policy, data: dict[str, torch.Tensor], steps: int, batch_size: int = 256,
                    lr: float = 3e-4, seed: int = 0, progress: bool = True) -> list[float]:
    """Train the velocity field on demo chunks (keys: state, actions (M,H,A) robot space, is_pad, images.*)."""
    if data["actions"].shape[1:] != (policy.spec.chunk_size, policy.spec.action_dim):
        raise ValueError(f"demo chunks have shape {tuple(data['actions'].shape[1:])}, the policy predicts "
                         f"{(policy.spec.chunk_size, policy.spec.action_dim)}")
    model = policy.model
    params = model.policy_parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    dev = policy.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    n = data["actions"].shape[0]
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="SFT", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen, device=dev).cpu()
        batch = policy.prepare({k: v[idx].to(dev) for k, v in data.items()})
        loss = flow_matching_loss(model, model.encode(batch), batch["actions"], generator=gen,
                                  is_pad=batch.get("is_pad"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    model.eval()
    return losses
