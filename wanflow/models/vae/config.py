"""Architecture constants of the two Wan VAEs; tests evolve them into tiny variants."""

from __future__ import annotations

from typing import Literal

import attrs

from wanflow.models.vae import normalization as norm

Version = Literal["wan2.1", "wan2.2"]


@attrs.frozen
class VAEConfig:
    """Everything that fixes a Wan VAE's layout and its latent statistics."""

    version: Version
    dim: int  # encoder base width
    z_dim: int  # latent channels
    mean: tuple[float, ...]  # per-channel latent statistics, len z_dim
    std: tuple[float, ...]
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # width multipliers per level
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per down level; decoder mirrors
    dec_dim: int | None = None  # decoder base width (None: same as the encoder)
    patch_size: int = 1  # pixel patchify before the encoder (2 for Wan2.2)

    @property
    def decoder_dim(self) -> int:
        return self.dim if self.dec_dim is None else self.dec_dim

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along height and width."""
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_compression(self) -> int:
        """Frames per latent after the first (which maps to latent 0 alone)."""
        return 2 ** sum(self.temporal_downsample)


#: `Wan2.1_VAE.pth`: z 16, 4x8x8 compression, 126.9 M parameters.
WAN21 = VAEConfig("wan2.1", dim=96, z_dim=16, mean=norm.WAN21_MEAN, std=norm.WAN21_STD)

#: `Wan2.2_VAE.pth`: z 48, 4x16x16 compression (patchify 2), 704.7 M parameters.
WAN22 = VAEConfig(
    "wan2.2", dim=160, dec_dim=256, z_dim=48, patch_size=2, mean=norm.WAN22_MEAN, std=norm.WAN22_STD
)

CONFIGS: dict[str, VAEConfig] = {"wan2.1": WAN21, "wan2.2": WAN22}
