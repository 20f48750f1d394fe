"""Rectified flow (TangoFlux, Stable Audio Open's rectified-flow variant): a straight path from data to noise,

    x_t = (1 - t) * x0 + t * noise,    t in [0, 1] (t = 0: data, t = 1: pure noise),

along which the velocity dx_t/dt = noise - x0 is constant; the model learns it by regression. Timesteps are drawn
logit-normal (sigmoid of a Gaussian, Esser et al. 2024), which weighs the middle of the path, where the velocity is
hardest to predict, more than its ends.

`flow_matching_errors` takes the noise and the timesteps as arguments: CRPO scores winner and loser, policy and
frozen reference, on the same noise and timestep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# velocity(x_t (B, C, T), t (B,), cond) -> predicted velocity (B, C, T)
Velocity = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) * x0 + t * noise, t (B,)."""
    t = expand_like(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The path's constant velocity dx_t/dt = noise - x0."""
    return noise - x0


def sample_times(
    batch: int,
    generator: torch.Generator | None = None,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(batch,) logit-normal timesteps: sigmoid(N(mean, std^2)). With a `generator` (a CPU one) they are drawn on
    the CPU and moved, so a seeded generator gives the same times on every device; without, from the global RNG
    on `device`."""
    if generator is None:
        normal = torch.randn(batch, device=device)
    else:
        normal = torch.randn(batch, generator=generator).to(device)
    return torch.sigmoid(mean + std * normal)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of (B, C, T) values over the valid frames of a (B, T) mask (all when None)."""
    if mask is None:
        return values.flatten(1).mean(1)
    weights = mask[:, None, :].to(values.dtype).expand_as(values)
    return (values * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1)


def flow_matching_errors(
    model: Velocity,
    x0: torch.Tensor,
    cond: Any,
    noise: torch.Tensor,
    t: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample mean squared velocity error (B,): mean over channels and the valid (unpadded) frames of
    `mask` (B, T) of (model(x_t, t, cond) - (noise - x0))^2, in float32 whatever the model's precision."""
    prediction = model(interpolate(x0, noise, t), t, cond)
    squared = (prediction.float() - velocity_target(x0, noise).float()) ** 2
    return masked_mean(squared, mask)


def flow_matching_loss(
    model: Velocity,
    x0: torch.Tensor,
    cond: Any,
    *,
    mask: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    time_mean: float = 0.0,
    time_std: float = 1.0,
) -> torch.Tensor:
    """The batch mean of `flow_matching_errors`, drawing the noise and logit-normal times it is not given."""
    if noise is None:
        noise = (
            torch.randn_like(x0) if generator is None else torch.randn(x0.shape, generator=generator).to(x0)
        )
    if t is None:
        t = sample_times(x0.shape[0], generator, mean=time_mean, std=time_std, device=x0.device)
    return flow_matching_errors(model, x0, cond, noise, t, mask).mean()
