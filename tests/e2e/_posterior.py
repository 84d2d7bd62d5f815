"""The authors' conditioning latents written out by hand, for the LongCat tests.

diffusers' ``DiagonalGaussianDistribution.sample`` (the authors' ``retrieve_latents``): ``mean +
exp(0.5 · clamp(logvar, −30, 20)) · ε``, ε standard normal of the mean's shape, then the per-channel
``(x − m) / s`` of ``normalize_latents``; ε from the documented seed of the node (sha256 of
"longcat-posterior:{seed}:{node}", its first 8 bytes big-endian, mod 2**63), drawn in fp32 on the CPU.
"""

from __future__ import annotations

import hashlib

import torch


def node_seed(seed: int, node: str) -> int:
    digest = hashlib.sha256(f"longcat-posterior:{seed}:{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


def held(vae, pixels: torch.Tensor, sample: bool, seed: int = 0, node: str = "", tile=None) -> torch.Tensor:
    """(1, z, T, h, w): the VAE posterior's sample (ε of ``node`` at ``seed``) or its mean, normalised
    by hand; ``pixels`` (1, 3, F, H, W) in [-1, 1]."""
    with torch.no_grad():
        mu, logvar = vae.moments(pixels, tile=tile)
    if sample:
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(node_seed(seed, node)))
        mu = mu + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    m = torch.tensor(vae.config.mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(vae.config.std).view(1, -1, 1, 1, 1)
    return (mu - m) / s
