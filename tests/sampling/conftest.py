"""A deterministic, nonlinear toy flow model and diffusers drivers for the sampler tests."""

from __future__ import annotations

import pytest
import torch

LATENT_SHAPE = (1, 4, 3, 4, 5)  # (B, C, T, H, W)


class ToyModel:
    """v(x, t): a fixed channel mix, a tanh and a t-dependent drift; counts its calls."""

    def __init__(self, seed: int = 0, bias: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(LATENT_SHAPE[1], LATENT_SHAPE[1], generator=g) * 0.3
        self.pattern = torch.randn(LATENT_SHAPE, generator=g)
        self.bias = bias
        self.calls: list[float] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(float(t))
        s = float(t) / 1000.0
        mixed = torch.einsum("oc,bcthw->bothw", self.mix, x)  # (B, C, T, H, W)
        return mixed * (0.5 + s) + 0.3 * torch.tanh(x) + (s - 0.4) * self.pattern + self.bias


@pytest.fixture
def toy_model() -> ToyModel:
    return ToyModel()


@pytest.fixture
def latent() -> torch.Tensor:
    return torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(123))


@pytest.fixture
def toy() -> type[ToyModel]:
    """The toy model class, for tests that need several independent instances."""
    return ToyModel
