"""Helpers: tiny Wan VAEs with seeded random weights, and the same weights in diffusers' AutoencoderKLWan."""

from __future__ import annotations

import attrs
import torch

from wanflow.models.vae import WAN21, WAN22, VAEConfig, VideoVAE
from wanflow.models.vae.keys import apply_stages, official_to_diffusers

#: Base width 8 (decoder 12 for 2.2), real z, mults, blocks and temporal layout.
TINY = {"wan2.1": attrs.evolve(WAN21, dim=8), "wan2.2": attrs.evolve(WAN22, dim=8, dec_dim=12)}


def random_vae(config: VAEConfig, seed: int = 0) -> VideoVAE:
    """randn * 0.1 everywhere (not the identity-like inits, which would hide wiring bugs)."""
    vae = VideoVAE(config).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for p in vae.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return vae


def diffusers_twin(vae: VideoVAE):
    """diffusers' AutoencoderKLWan holding `vae`'s weights through our key table (strict)."""
    from diffusers import AutoencoderKLWan

    cfg = vae.config
    extra = {}
    if cfg.version == "wan2.2":
        extra = dict(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16)
    twin = AutoencoderKLWan(
        base_dim=cfg.dim, decoder_base_dim=cfg.dec_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks, temperal_downsample=list(cfg.temporal_downsample),
        latents_mean=list(cfg.mean), latents_std=list(cfg.std), **extra,
    ).eval()
    twin.load_state_dict(apply_stages(vae.state_dict(), official_to_diffusers(cfg)), strict=True)
    return twin


def video(vae: VideoVAE, frames: int, h: int = 2, w: int = 3, seed: int = 1) -> torch.Tensor:
    """A random clip in [-1, 1] whose size is (h, w) latents."""
    s = vae.config.spatial_compression
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, h * s, w * s, generator=g) * 2 - 1


def latents(vae: VideoVAE, frames: int, h: int = 2, w: int = 3, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, vae.config.z_dim, frames, h, w, generator=g)
