"""Initial noise and seeds: every random number comes from an explicit seeded generator."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Optional

import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.schedules import Schedule

SEED_LIMIT = 2**63  # torch.Generator.manual_seed takes any non-negative int64


def check_seed(seed: int) -> None:
    """Refuse seeds a generator cannot take (no 'random' sentinel: draw one and record it)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ModelInputError(
            f"[sampler].seed = {seed!r}: must be an integer in [0, 2**63); "
            "leave it out to have one drawn and recorded in the run's lock"
        )


def draw_seed() -> int:
    """A fresh seed for a run that named none; the caller records it so the run reproduces."""
    return secrets.randbelow(2**32)


def initial_noise(
    shape: Sequence[int], seed: int, *, noise_device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Standard normal fp32 noise made on ``noise_device``: one seed, one noise, on any device."""
    check_seed(seed)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ModelInputError(f"noise shape {tuple(shape)}: every size must be a positive integer")
    generator = torch.Generator(device=noise_device).manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, device=noise_device, dtype=torch.float32)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The flow path at σ: (1 − σ)·x0 + σ·ε, in fp32."""
    if x0.shape != noise.shape:
        raise ModelInputError(
            f"input latent {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape: "
            "encode the input video at the recipe's size and frame count"
        )
    return (1.0 - sigma) * x0.float() + sigma * noise.float()


def initial_latent(
    noise: torch.Tensor, schedule: Schedule, start: int, x0: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The latent sampling starts from: pure noise at step 0, else the input noised to σ_start."""
    if start == 0:
        return noise.float()
    if x0 is None or not 0 < start <= schedule.steps:
        raise ModelInputError(
            f"starting at step {start} of {schedule.steps} needs an input latent to noise "
            "([inputs].video with denoising_strength < 1) and a start within the schedule"
        )
    return noised(x0, noise, schedule.sigma(start))
