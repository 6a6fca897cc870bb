"""What a flow-matching policy model must provide for the samplers, the RL algorithms and the SFT loss.

Small flow policies, pi0 and pi0.5 all implement this, so one trainer and one deploy path serve them all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Context = Any  # per-chunk prefix: an observation embedding, or a VLM key/value cache


class FlowPolicyModel(nn.Module):
    """Velocity field v_theta(x_t, t | obs) over action chunks of shape (chunk_size, action_dim).

    ``encode`` runs once per chunk (for pi0 it fills the prefix key/value cache); ``velocity`` runs once per
    denoising step and also returns the per-token features that feed the action projection (the Flow-Noise noise
    net and pi0's value head read them).
    """

    chunk_size: int
    action_dim: int
    has_noise_net: bool = False
    has_value_head: bool = False

    def encode(self, batch: dict[str, torch.Tensor]) -> Context:
        raise NotImplementedError

    def velocity(self, ctx: Context, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (B, H, A), t (B,) -> velocity (B, H, A), per-token features (B, H, F)."""
        raise NotImplementedError

    def noise_std(self, feats: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Flow-Noise: per-entry std of the denoising step, (B, H, A), inside the noise net's band."""
        raise NotImplementedError(f"{type(self).__name__} has no noise network")

    def value(self, ctx: Context, feats: torch.Tensor | None) -> torch.Tensor:
        """State value (B,). feats: action-expert features averaged over the chain's steps, or None."""
        raise NotImplementedError(f"{type(self).__name__} has no value head")

    def batch_size(self, ctx: Context) -> int:
        raise NotImplementedError

    def prepare_inference(self) -> None:
        """Switch to the fastest inference setup for the device the model is on (deploy bundles, `pirl serve`).
        Called after `.to(device).eval()`; the default changes nothing."""

    def policy_parameters(self) -> list[nn.Parameter]:
        """Parameters the actor optimiser trains (velocity field and noise net; frozen parts excluded)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("value_head")]

    def value_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and n.startswith("value_head")]


class NoiseNet(nn.Module):
    """Flow-Noise's learnable exploration noise: per-token features -> std in [std_min, std_max].

    The log-std is squashed with tanh into the band, so exploration can neither vanish nor explode.
    """

    def __init__(self, feat_dim: int, action_dim: int, hidden: int = 128, std_min: float = 0.08,
                 std_max: float = 0.16):
        super().__init__()
        if not 0 < std_min < std_max:
            raise ValueError(f"noise band must satisfy 0 < std_min < std_max, got [{std_min}, {std_max}]")
        self.net = nn.Sequential(nn.Linear(feat_dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, action_dim))
        self.log_min, self.log_max = float(torch.tensor(std_min).log()), float(torch.tensor(std_max).log())

    def forward(self, feats: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(feats).view(-1, 1, 1).expand(*feats.shape[:-1], 1)
        raw = self.net(torch.cat([feats, tt], -1))
        log_std = self.log_min + 0.5 * (torch.tanh(raw) + 1.0) * (self.log_max - self.log_min)
        return log_std.exp()
