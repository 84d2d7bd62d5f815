"""Our VAEs against diffusers' AutoencoderKLWan on the same (converted) random weights."""

from __future__ import annotations

import pytest
import torch

from ._fixtures import latents, video
from wanflow.models.vae.normalization import denormalize, normalize


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |diff| in units of the output's scale (max |ref|)."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(pair, frames):
    ours, twin = pair
    x = video(ours, frames, h=2, w=2)
    with torch.no_grad():
        mu_ref, log_var_ref = twin._encode(x).chunk(2, dim=1)  # raw moments
    latent = ours.encode(x)
    assert latent.shape == (1, ours.config.z_dim, 1 + (frames - 1) // 4, 2, 2)
    expected = normalize(mu_ref, ours.config.mean, ours.config.std)
    assert _rel_err(latent, expected) <= 1e-5  # measured: ~1e-7
    _, log_var = ours.moments(x)
    assert _rel_err(log_var, log_var_ref) <= 1e-5


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_decode_matches_diffusers(pair, frames):
    ours, twin = pair
    z = latents(ours, frames, h=2, w=2)
    raw = denormalize(z, ours.config.mean, ours.config.std)
    with torch.no_grad():
        ref = twin._decode(raw).sample  # clamped by diffusers
    pre_clamp = ours.decode_raw(raw)
    # the comparison is only strong if the outputs are not saturated at +-1
    assert (pre_clamp.abs() < 1).float().mean() > 0.9
    out = ours.decode(z)
    assert out.shape == (1, 3, 1 + 4 * (frames - 1), *ref.shape[-2:])
    assert _rel_err(out, ref) <= 1e-5  # measured: ~5e-7


def test_sampled_encode_is_seeded_and_centred_on_the_mean(tiny):
    x = video(tiny, 1, h=2, w=2)
    mean = tiny.encode(x)
    a = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    b = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    c = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    mu, log_var = tiny.moments(x)
    std = torch.exp(0.5 * log_var) / torch.tensor(tiny.config.std).view(1, -1, 1, 1, 1)
    z_score = (a - mean) / std  # should be standard normal noise
    assert 0.7 < z_score.std().item() < 1.3 and z_score.mean().abs().item() < 0.3
