"""Activation estimates against the live tensor bytes of tiny models' runs (within 20 %)."""

from __future__ import annotations

import attrs
import pytest
import torch

from wanflow.memory import estimates
from wanflow.models.dit import WanDiT

from ..models._dit_fixtures import inputs, random_state, tiny_config
from ..models.vae._fixtures import TINY, random_vae
from ._ledger import LiveBytes, weight_bytes


@pytest.mark.parametrize("variant, overrides, grid, dtype", [
    ("t2v", {}, (3, 8, 8), torch.float32),  # the padded 4096-wide prompt dominates
    ("t2v", {"dim": 256, "ffn_dim": 1536, "num_heads": 2, "text_dim": 64}, (5, 16, 16), torch.float32),
    ("t2v", {"dim": 256, "ffn_dim": 768, "num_heads": 2, "text_dim": 64}, (9, 32, 32), torch.bfloat16),
    ("i2v", {"text_dim": 64}, (5, 16, 16), torch.float32),
])
def test_dit_forward_estimate(variant, overrides, grid, dtype):
    cfg = tiny_config(variant, **overrides)
    model = WanDiT(cfg)
    model.load_state_dict(random_state(cfg))
    model.eval().set_compute_dtype(dtype)
    with torch.no_grad(), LiveBytes(model) as ledger:
        model(**inputs(cfg, grid=grid))
    measured = ledger.peak - weight_bytes(model)
    assert estimates.dit_forward_bytes(cfg, grid, dtype.itemsize) == pytest.approx(measured, rel=0.2)


@pytest.mark.parametrize("version, latent", [("wan2.1", (3, 8, 8)), ("wan2.1", (5, 16, 16)),
                                             ("wan2.2", (3, 8, 8))])
def test_vae_decode_estimate(version, latent):
    vae = random_vae(TINY[version])
    z = torch.randn(1, vae.config.z_dim, *latent)
    with torch.no_grad(), LiveBytes(vae) as ledger:
        video = vae.decode(z)
    frames, height, width = video.shape[2:]
    predicted = estimates.vae_decode_bytes(version, vae.config.decoder_dim, frames, height, width, 4)
    assert predicted == pytest.approx(ledger.peak - weight_bytes(vae), rel=0.2)


def test_latent_grid_follows_the_vae_strides():
    assert estimates.latent_grid(81, 480, 832) == (21, 60, 104)
    assert estimates.latent_grid(121, 704, 1280, "wan2.2") == (31, 44, 80)
    cfg = attrs.evolve(tiny_config("t2v"))
    assert estimates.dit_tokens(cfg, (21, 60, 104)) == 21 * 30 * 52
