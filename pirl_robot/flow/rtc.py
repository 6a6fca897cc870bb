"""Real-time chunking (RTC): sample the next chunk as a continuation of the chunk the arm is executing.

    prefix = ChunkPrefix(actions=committed, inference_delay=2, execution_horizon=6)   # robot units, (P, A)
    out = policy.infer(obs, noise=noise, prefix=prefix)    # out["actions"][:2] ~= committed[:2], then a smooth handover

A chunk requested at tick k arrives d ticks later (the inference delay); meanwhile the arm keeps executing the
current chunk, so the new chunk's first d actions are already decided. RTC (Black et al. 2025, "Real-Time
Execution of Action Chunking Flow Policies") treats the new chunk as inpainting: at every denoising step the
velocity is corrected so that the predicted clean chunk x1 = x_t - t v follows the committed actions, with weight
1 on the first d entries (frozen), fading linearly to 0 at the execution horizon, free after it.

Reused from lerobot 0.6.1 (not rewritten): `lerobot.policies.rtc.modeling_rtc.RTCProcessor.denoise_step` (the
guided velocity: prefix weights, the guidance weight clipped at `max_guidance_weight`, its correction) and
`lerobot.policies.common.flow_matching.euler_integrate` (the Euler chain t: 1 -> 0, x <- x - v/K, which is our
sampler's ODE chain). Our part is the glue that makes it work for every `FlowPolicyModel` (flow MLP, pi0, pi0.5):
the committed actions are in robot units and go through the policy's own input transforms (delta actions
relative to the new observation's state, normalisation) into model space, and the model's velocity hook
`velocity(ctx, x, t)` is the denoiser. pi0's padded action entries (max_action_dim) get lerobot's zero padding
as their prefix: lerobot trains them on zero-padded targets, so 0 is what the model predicts there anyway.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from pirl_robot.spec import PolicySpec


@dataclass(frozen=True)
class ChunkPrefix:
    """What the new chunk must continue: the committed actions from the new chunk's first tick on.

    actions: (P, action_dim) robot-space actions, P <= chunk_size (what the arm runs from the observation's tick).
    inference_delay: d, the actions that will have run before the new chunk can arrive (guidance weight 1).
    execution_horizon: guidance fades from 1 at d to 0 here (lerobot's execution_horizon); capped at P.
    """

    actions: np.ndarray
    inference_delay: int
    execution_horizon: int

    def check(self, spec: PolicySpec) -> None:
        """Raise ValueError naming what does not fit `spec` (shape, NaN, delay or horizon out of range)."""
        a = np.asarray(self.actions)
        if a.ndim != 2 or a.shape[1] != spec.action_dim or not 1 <= a.shape[0] <= spec.chunk_size:
            raise ValueError(f"prefix actions must be (P, {spec.action_dim}) with 1 <= P <= {spec.chunk_size}, "
                             f"got shape {a.shape}")
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise ValueError("prefix actions must be finite floats")
        if not 0 <= self.inference_delay <= a.shape[0]:
            raise ValueError(f"inference_delay {self.inference_delay} outside [0, {a.shape[0]}] (prefix length)")
        if not self.inference_delay <= self.execution_horizon <= spec.chunk_size:
            raise ValueError(f"execution_horizon {self.execution_horizon} outside [inference_delay="
                             f"{self.inference_delay}, chunk_size={spec.chunk_size}]")


@dataclass(frozen=True)
class RtcSettings:
    max_guidance_weight: float = 10.0  # lerobot's default (the paper's beta)
    schedule: str = "linear"  # prefix weights after the frozen part: zeros | ones | linear | exp (lerobot's names)


@functools.cache
def load_lerobot_rtc():
    """lerobot's RTC pieces. Importing them loads lerobot's policy package (seconds, ~16 s on a loaded 2-core
    machine): servers and deploy nodes call this at start-up, so no chunk pays for it."""
    from lerobot.configs import RTCAttentionSchedule
    from lerobot.policies.common.flow_matching import euler_integrate
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from lerobot.policies.rtc.modeling_rtc import RTCProcessor

    return RTCAttentionSchedule, RTCConfig, RTCProcessor, euler_integrate


def _processor(settings: RtcSettings):
    schedule_enum, config, processor, _ = load_lerobot_rtc()
    schedule = schedule_enum[settings.schedule.upper()]
    return processor(config(prefix_attention_schedule=schedule, max_guidance_weight=settings.max_guidance_weight))


def guided_chain(model, ctx, noise: torch.Tensor, num_steps: int, prefix: torch.Tensor | None, inference_delay: int,
                 execution_horizon: int, settings: RtcSettings = RtcSettings()) -> torch.Tensor:
    """The deployment ODE chain of `model` from `noise` (B, H, A_model), guided towards `prefix` (B, P, A) in model
    space when given (lerobot's euler_integrate + RTCProcessor); prefix None is the plain chain."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model.velocity(ctx, x, t)[0].to(x.dtype)

    euler_integrate = load_lerobot_rtc()[3]
    return euler_integrate(velocity, noise.float(), num_steps, rtc_processor=_processor(settings),
                           rtc_enabled=prefix is not None, inference_delay=inference_delay,
                           prev_chunk_left_over=prefix, execution_horizon=execution_horizon)


@torch.no_grad()
def sample_with_prefix(policy, raw: dict[str, torch.Tensor], prefix: ChunkPrefix, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None,
                       settings: RtcSettings = RtcSettings()) -> torch.Tensor:
    """Robot-space actions (B, H, A) of `policy` for a raw batch (Policy.to_batch), continuing `prefix`.

    The committed actions go through the policy's input transforms with the new observation's state, so delta
    actions are relative to where the arm is now, exactly as the model sees its training targets."""
    prefix.check(policy.spec)
    model = policy.model
    device = next(model.parameters()).device
    b = next(iter(v for v in raw.values() if isinstance(v, torch.Tensor))).shape[0]
    committed = torch.as_tensor(np.asarray(prefix.actions, dtype=np.float32), device=device)
    committed = committed.unsqueeze(0).expand(b, -1, -1)
    to_model = {"actions": committed, **({"state": raw["state"]} if "state" in raw else {})}
    prefix_model = policy.prepare(to_model)["actions"].float()
    ctx = model.encode(policy.prepare(raw))
    shape = (b, model.chunk_size, model.action_dim)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=device)
    noise = noise.to(device)
    if tuple(noise.shape) != shape:
        raise ValueError(f"initial noise must have shape {shape}, got {tuple(noise.shape)}")
    actions = guided_chain(model, ctx, noise, policy.sampler.num_steps, prefix_model, prefix.inference_delay,
                           prefix.execution_horizon, settings)
    return policy.postprocess(actions, raw)
