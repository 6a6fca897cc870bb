"""Small composable transforms shared by training and inference (in the spirit of openpi's).

Each transform maps a batch dict to a batch dict. The input pipeline of a policy turns a raw observation (and,
in training, raw actions) into model space; the output pipeline turns model actions back into robot commands.
Both pipelines are built from the spec and the dataset statistics in exactly one place (`PolicyTransforms`),
so simulation, evaluation and the robot cannot drift apart.

Batch keys: ``state`` (B, S), ``actions`` (B, H, A), ``images.<cam>`` (B, H, W, 3) uint8 or float in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from pirl_robot.spec import PolicySpec

Batch = dict[str, torch.Tensor]
EPS = 1e-6
STATE_CLIP = 10.0  # normalised state entries beyond +-10 std are clipped


@dataclass
class Stats:
    """Per-entry statistics of one vector feature (state or action)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[float]]) -> "Stats":
        mean = torch.as_tensor(d["mean"], dtype=torch.float32)
        std = torch.as_tensor(d["std"], dtype=torch.float32)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"stats mean/std must be equal-length vectors, got {tuple(mean.shape)} / {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
            raise ValueError("stats contain NaN/inf or a negative std")
        return cls(mean, std)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def of(cls, x: torch.Tensor, min_std: float = 1e-3) -> "Stats":
        """Stats of samples x (..., D). The std floor keeps an entry that barely moved in the data (a finger
        held closed in every demo) from being blown up by a tiny divisor when it does move later."""
        x = x.reshape(-1, x.shape[-1]).float()
        return cls(x.mean(0), x.std(0).clamp_min(min_std))


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Batch], Batch]]):
        self.transforms = list(transforms)

    def __call__(self, batch: Batch) -> Batch:
        for t in self.transforms:
            batch = t(batch)
        return batch


@dataclass
class Normalize:
    """(x - mean) / std per entry, optionally clipped to [-clip, clip] (observations far outside the data the
    stats came from would otherwise reach the network as huge values)."""

    key: str
    stats: Stats
    clip: float | None = None

    def __call__(self, batch: Batch) -> Batch:
        if self.key in batch:
            x = batch[self.key]
            y = (x - self.stats.mean.to(x)) / self.stats.std.to(x).clamp_min(EPS)
            batch = {**batch, self.key: y if self.clip is None else y.clamp(-self.clip, self.clip)}
        return batch


@dataclass
class Unnormalize:
    key: str
    stats: Stats

    def __call__(self, batch: Batch) -> Batch:
        if self.key in batch:
            x = batch[self.key]
            batch = {**batch, self.key: x * self.stats.std.to(x).clamp_min(EPS) + self.stats.mean.to(x)}
        return batch


@dataclass
class DeltaActions:
    """Absolute actions -> actions relative to the current state, on the masked entries (training input)."""

    mask: torch.Tensor  # (A,) bool
    state_index: torch.Tensor  # (A,) long, -1 where no state entry

    def __call__(self, batch: Batch) -> Batch:
        if "actions" not in batch or not self.mask.any():
            return batch
        return {**batch, "actions": batch["actions"] - _masked_state(batch["state"], self.mask, self.state_index)}


@dataclass
class AbsoluteActions:
    """Inverse of DeltaActions (inference output). Needs the raw (unnormalised) state under ``raw_state``."""

    mask: torch.Tensor
    state_index: torch.Tensor

    def __call__(self, batch: Batch) -> Batch:
        if not self.mask.any():
            return batch
        return {**batch, "actions": batch["actions"] + _masked_state(batch["raw_state"], self.mask, self.state_index)}


def _masked_state(state: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    ref = state[..., index.clamp_min(0)] * mask.to(state)  # (B, A)
    return ref.unsqueeze(-2)  # broadcast over the chunk


@dataclass
class ImagesToFloat:
    """uint8 HWC images -> float CHW in [0, 1] (what the vision encoders take)."""

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for k, v in batch.items():
            if k.startswith("images."):
                if v.dtype == torch.uint8:
                    v = v.float() / 255.0
                if v.shape[-1] == 3:
                    v = v.movedim(-1, -3)
                out[k] = v
        return out


@dataclass
class PolicyTransforms:
    """The input and output pipelines of one policy, and the stats they were built from."""

    spec: PolicySpec
    state_stats: Stats | None
    action_stats: Stats | None
    inputs: Compose = field(init=False)
    outputs: Compose = field(init=False)

    def __post_init__(self) -> None:
        a = self.spec.action_dim
        mask = torch.tensor(self.spec.delta_action_mask or [False] * a, dtype=torch.bool)
        index = torch.tensor(self.spec.action_state_index or [-1] * a, dtype=torch.long)
        ins: list = [DeltaActions(mask, index)]
        outs: list = []
        if self.state_stats is not None:
            ins.append(Normalize("state", self.state_stats, clip=STATE_CLIP))
        if self.action_stats is not None:
            ins.append(Normalize("actions", self.action_stats))
            outs.append(Unnormalize("actions", self.action_stats))
        ins.append(ImagesToFloat())
        outs.append(AbsoluteActions(mask, index))
        self.inputs, self.outputs = Compose(ins), Compose(outs)

    def to_dict(self) -> dict:
        return {"state": self.state_stats.to_dict() if self.state_stats else None,
                "actions": self.action_stats.to_dict() if self.action_stats else None}

    @classmethod
    def from_dict(cls, spec: PolicySpec, d: dict) -> "PolicyTransforms":
        s = Stats.from_dict(d["state"]) if d.get("state") else None
        a = Stats.from_dict(d["actions"]) if d.get("actions") else None
        if s is not None and s.mean.numel() != spec.state_dim:
            raise ValueError(f"state stats have {s.mean.numel()} entries, spec has {spec.state_dim}")
        if a is not None and a.mean.numel() != spec.action_dim:
            raise ValueError(f"action stats have {a.mean.numel()} entries, spec has {spec.action_dim}")
        return cls(spec, s, a)
