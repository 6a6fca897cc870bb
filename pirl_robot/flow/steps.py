"""One denoising transition x_t -> x_{t-d} of a flow policy, as a Gaussian (mean, std).

Convention (openpi / lerobot): t = 1 is noise, t = 0 is the action; Euler step x_{t-d} = x_t - d * v.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def time_grid(num_steps: int) -> torch.Tensor:
    """t_k = 1 - k/K for k = 0..K (K+1 points, from noise to action)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(1.0, 0.0, num_steps + 1)


def ode_mean(x: torch.Tensor, v: torch.Tensor, d: float | torch.Tensor) -> torch.Tensor:
    return x - _bcast(d, x) * v


def sde_sigma(t: torch.Tensor, d: float, noise_level: float) -> torch.Tensor:
    """s_t = a * sqrt(t / (1 - t)); at t = 1 the next grid time stands in for the denominator's t."""
    t_den = torch.where(t >= 1.0 - 1e-6, torch.full_like(t, 1.0 - d), t)
    return noise_level * torch.sqrt(t / (1.0 - t_den))


def sde_step_stats(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, d: float,
                   noise_level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler-Maruyama step of the SDE with the flow ODE's marginals (Flow-SDE).

    dx = [v + s_t^2 / (2t) * (x + (1 - t) v)] dt + s_t dW, integrated with dt = -d:
    mean = x - d v - s_t^2 d / (2t) * (x + (1 - t) v),  std = sqrt(d) s_t.
    (x + (1 - t) v is the model's estimate of the noise, so the correction is the score term.)
    """
    s = sde_sigma(t, d, noise_level)
    tb, sb = _bcast(t, x), _bcast(s, x)
    mean = x - d * v - (sb**2) * d / (2.0 * tb) * (x + (1.0 - tb) * v)
    std = (math.sqrt(d) * sb).expand_as(x)
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * ((x - mean) / std) ** 2 - std.log() - 0.5 * LOG_2PI


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    return 0.5 * (LOG_2PI + 1.0) + std.log()


def _bcast(v: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(v, torch.Tensor) and v.ndim == 1:
        return v.to(like).view(-1, *([1] * (like.ndim - 1)))
    return v
