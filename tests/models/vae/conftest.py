"""Session fixtures: each tiny VAE version, alone and with its diffusers twin."""

from __future__ import annotations

import pytest

from wanflow.models.vae import VideoVAE

from ._fixtures import TINY, diffusers_twin, random_vae


@pytest.fixture(scope="session", params=["wan2.1", "wan2.2"])
def pair(request):
    """(ours, diffusers) for each version, built once per session."""
    vae = random_vae(TINY[request.param])
    return vae, diffusers_twin(vae)


@pytest.fixture(scope="session", params=["wan2.1", "wan2.2"])
def tiny(request) -> VideoVAE:
    """Each version alone, with seeded random weights."""
    return random_vae(TINY[request.param])
