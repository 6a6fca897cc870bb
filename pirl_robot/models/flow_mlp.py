"""A small flow policy for CPU-scale runs: state (and optionally camera) input, action-chunk velocity output.

Structured like pi0's action expert at toy scale: the trunk produces per-token features (one token per action
of the chunk) and a shared projection maps each token to an action, so the Flow-Noise noise net reads the same
kind of features as it does on pi0. The value head reads the observation embedding (pi0.5-style placement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pirl_robot.models.base import FlowPolicyModel, NoiseNet


@dataclass
class FlowMLPConfig:
    state_dim: int
    action_dim: int
    chunk_size: int
    cameras: tuple[str, ...] = ()
    image_size: int = 64
    hidden: int = 256
    depth: int = 3
    token_dim: int = 64
    obs_dim: int = 128
    time_dim: int = 32
    noise_net: bool = True
    noise_std_min: float = 0.08
    noise_std_max: float = 0.16
    value_head: bool = True

    def __post_init__(self) -> None:
        if self.state_dim <= 0 and not self.cameras:
            raise ValueError("FlowMLP needs a state input, a camera, or both")
        for name in ("action_dim", "chunk_size", "hidden", "depth", "token_dim", "obs_dim", "time_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FlowMLPConfig.{name} must be positive")


def mlp(i: int, h: int, o: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(depth):
        layers += [nn.Linear(i if k == 0 else h, h), nn.SiLU()]
    layers.append(nn.Linear(h if depth else i, o))
    return nn.Sequential(*layers)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float().view(-1, 1) * freqs * 2 * math.pi
    return torch.cat([ang.sin(), ang.cos()], -1)


class ConvEncoder(nn.Module):
    """Small CNN for one camera image (B, 3, H, W) in [0, 1] -> (B, out)."""

    def __init__(self, out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, out))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img * 2.0 - 1.0)


class FlowMLP(FlowPolicyModel):
    def __init__(self, cfg: FlowMLPConfig):
        super().__init__()
        self.cfg = cfg
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        in_obs = cfg.state_dim + cfg.obs_dim * len(cfg.cameras)
        self.cams = nn.ModuleDict({c: ConvEncoder(cfg.obs_dim) for c in cfg.cameras})
        self.obs_encoder = mlp(in_obs, cfg.hidden, cfg.obs_dim, 2)
        self.trunk = mlp(cfg.chunk_size * cfg.action_dim + cfg.time_dim + cfg.obs_dim, cfg.hidden,
                         cfg.chunk_size * cfg.token_dim, cfg.depth)
        self.action_out_proj = nn.Linear(cfg.token_dim, cfg.action_dim)
        self.has_noise_net = cfg.noise_net
        if cfg.noise_net:
            self.noise_net = NoiseNet(cfg.token_dim, cfg.action_dim, 64, cfg.noise_std_min, cfg.noise_std_max)
        self.has_value_head = cfg.value_head
        if cfg.value_head:
            self.value_head = mlp(cfg.state_dim + cfg.obs_dim, cfg.hidden, 1, 2)

    def encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = []
        if self.cfg.state_dim:
            parts.append(batch["state"].float())
        for name, enc in self.cams.items():
            key = f"images.{name}"
            if key not in batch:
                raise KeyError(f"observation lacks camera {name!r} (expected key {key!r})")
            parts.append(enc(batch[key].float()))
        obs = torch.cat(parts, -1)
        return {"obs": self.obs_encoder(obs), "state": batch["state"].float() if self.cfg.state_dim else obs[:, :0]}

    def batch_size(self, ctx: dict[str, torch.Tensor]) -> int:
        return ctx["obs"].shape[0]

    def velocity(self, ctx, x_t, t):
        b = x_t.shape[0]
        h = torch.cat([x_t.reshape(b, -1), time_embedding(t.expand(b), self.cfg.time_dim), ctx["obs"]], -1)
        feats = nn.functional.silu(self.trunk(h).view(b, self.chunk_size, self.cfg.token_dim))
        return self.action_out_proj(feats), feats

    def noise_std(self, feats, t):
        if not self.has_noise_net:
            return super().noise_std(feats, t)
        return self.noise_net(feats, t)

    def value(self, ctx, feats=None):
        if not self.has_value_head:
            return super().value(ctx, feats)
        # The critic reads the observation embedding but does not shape it: the actor owns the encoder.
        return self.value_head(torch.cat([ctx["state"], ctx["obs"].detach()], -1)).squeeze(-1)
