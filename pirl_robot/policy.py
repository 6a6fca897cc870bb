"""The one policy interface: observation in, action chunk out, identical in simulation, evaluation and on a robot.

    policy = Policy.load("outputs/run/checkpoints/last")           # a checkpoint dir (bundles: bundle.load_bundle)
    out = policy.infer({"state": qpos_and_more, "images": {"wrist": img}}, noise=fixed_noise)
    out["actions"]  # (chunk_size, action_dim) robot-space commands, e.g. absolute joint targets
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from pirl_robot.flow.rtc import ChunkPrefix, sample_with_prefix
from pirl_robot.flow.sampler import Chain, ChainConfig, sample_chain
from pirl_robot.models.base import FlowPolicyModel
from pirl_robot.spec import PolicySpec
from pirl_robot.transforms import PolicyTransforms


class ObservationError(ValueError):
    """An observation does not match the policy spec (missing camera, wrong state length, NaN...)."""


@dataclass
class Policy:
    spec: PolicySpec
    model: FlowPolicyModel
    transforms: PolicyTransforms
    sampler: ChainConfig = ChainConfig(num_steps=4, mode="ode")
    model_kind: str = "flow_mlp"

    # --- observation handling -------------------------------------------------------------------------------
    def to_batch(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Raw observation (single or batched) -> raw batch tensors, validated against the spec."""
        device = next(self.model.parameters()).device
        batch: dict[str, torch.Tensor] = {}
        if self.spec.state_dim:
            if "state" not in obs:
                raise ObservationError("observation has no 'state'")
            s = torch.as_tensor(np.asarray(obs["state"], dtype=np.float32), device=device)
            s = s.unsqueeze(0) if s.ndim == 1 else s
            if s.shape[-1] != self.spec.state_dim:
                raise ObservationError(f"state has {s.shape[-1]} entries, the policy expects {self.spec.state_dim} "
                                       f"({', '.join(self.spec.state_names[:4])}, ...)")
            if not torch.isfinite(s).all():
                raise ObservationError("state contains NaN or inf")
            batch["state"] = s
        images = obs.get("images", {})
        for cam in self.spec.cameras:
            if cam.name not in images:
                raise ObservationError(f"observation lacks camera {cam.name!r}; has {sorted(images)}")
            img = torch.as_tensor(np.asarray(images[cam.name]), device=device)
            img = img.unsqueeze(0) if img.ndim == 3 else img
            if tuple(img.shape[-3:-1]) != (cam.height, cam.width) or img.shape[-1] != 3:
                raise ObservationError(f"camera {cam.name!r}: got {tuple(img.shape[-3:])}, expected "
                                       f"({cam.height}, {cam.width}, 3)")
            batch[f"images.{cam.name}"] = img
        if "instruction" in obs:  # VLA policies tokenise it themselves; others ignore it
            text = obs["instruction"]
            batch["instruction"] = [text] if isinstance(text, str) else list(text)
        return batch

    def is_single(self, obs: Mapping[str, Any]) -> bool:
        """One observation (state of rank 1, images of rank 3), not a batch: decided by whichever input the spec
        has, so an image-only policy answers a single observation with a single chunk too."""
        if self.spec.state_dim:
            return np.ndim(obs["state"]) == 1
        return np.ndim(obs["images"][self.spec.cameras[0].name]) == 3

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Shape of one chunk's initial noise: the model's chain space (pi0 samples in its padded action dims)."""
        return self.model.chunk_size, self.model.action_dim

    def prepare(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.transforms.inputs(raw)

    def encode(self, raw: dict[str, torch.Tensor]):
        """The model's per-chunk context (pi0: the prefix KV cache) of a raw batch: transforms, then encode.
        The one door from observations to the model, for rollouts, losses and inference alike."""
        return self.model.encode(self.prepare(raw))

    def postprocess(self, model_actions: torch.Tensor, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        # A model may sample in a padded action space (pi0: max_action_dim); the spec's actions come first.
        model_actions = model_actions[..., : self.spec.action_dim]
        out = self.transforms.outputs({"actions": model_actions, "raw_state": raw.get("state")})
        return out["actions"]

    # --- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, raw: dict[str, torch.Tensor], cfg: ChainConfig | None = None, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[Chain, torch.Tensor]:
        """Model-space chain and robot-space actions for a raw batch (used by rollouts and by infer)."""
        ctx = self.encode(raw)
        chain = sample_chain(self.model, ctx, cfg or self.sampler, noise=noise, generator=generator)
        return chain, self.postprocess(chain.actions, raw)

    def infer(self, obs: Mapping[str, Any], noise: np.ndarray | torch.Tensor | None = None,
              generator: torch.Generator | None = None, prefix: ChunkPrefix | None = None) -> dict[str, np.ndarray]:
        """prefix: the committed actions the chunk must continue (real-time chunking, flow/rtc.py)."""
        raw = self.to_batch(obs)
        single = self.is_single(obs)
        if noise is not None:
            noise = torch.as_tensor(np.asarray(noise), dtype=torch.float32, device=self.device)
            noise = noise.unsqueeze(0) if noise.ndim == 2 else noise
        if prefix is not None:
            actions = sample_with_prefix(self, raw, prefix, noise=noise, generator=generator)
        else:
            _, actions = self.sample(raw, noise=noise, generator=generator)
        actions = actions.float().cpu().numpy()
        if not np.isfinite(actions).all():
            raise FloatingPointError("policy produced NaN/inf actions")
        return {"actions": actions[0] if single else actions}

    # --- persistence ----------------------------------------------------------------------------------------
    def save(self, path) -> None:
        from pirl_robot.checkpoint import save_policy

        save_policy(self, path)

    @classmethod
    def load(cls, path, device: str = "cpu") -> "Policy":
        from pirl_robot.checkpoint import load_policy

        return load_policy(path, device=device)
