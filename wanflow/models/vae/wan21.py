"""The Wan2.1 VAE's encoder and decoder: flat lists of residual blocks and resamplers."""

from __future__ import annotations

from torch import nn

from wanflow.models.vae.config import VAEConfig
from wanflow.models.vae.layers import CausalCoder, CausalConv3d, ResidualBlock, Resample, head, middle


def _down_stages(cfg: VAEConfig, dims: list[int]) -> nn.ModuleList:
    """Per level: `num_res_blocks` residual blocks, then a 2-D or 3-D downsample (not on the last)."""
    layers: list[nn.Module] = []
    for level, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for i in range(cfg.num_res_blocks):
            layers.append(ResidualBlock(cin if i == 0 else cout, cout))
        if level < len(cfg.dim_mult) - 1:
            mode = "downsample3d" if cfg.temporal_downsample[level] else "downsample2d"
            layers.append(Resample(cout, mode))
    return nn.ModuleList(layers)


def build_encoder(cfg: VAEConfig, in_channels: int = 3) -> CausalCoder:
    """Video (B, 3, T, H, W) -> moments (B, 2z, 1+(T-1)//4, H/8, W/8)."""
    dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
    return CausalCoder(
        CausalConv3d(in_channels, dims[0], 3, padding=1), ("downsamples", _down_stages(cfg, dims)),
        middle(dims[-1]), head(dims[-1], 2 * cfg.z_dim), middle_first=False,
    )


def _up_stages(cfg: VAEConfig, dims: list[int]) -> nn.ModuleList:
    """Per level: `num_res_blocks + 1` residual blocks, then an upsample that halves the width."""
    temporal = cfg.temporal_downsample[::-1]
    layers: list[nn.Module] = []
    for level, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin // 2 if level > 0 else cin  # the previous upsample halved the width
        for i in range(cfg.num_res_blocks + 1):
            layers.append(ResidualBlock(cin if i == 0 else cout, cout))
        if level < len(cfg.dim_mult) - 1:
            layers.append(Resample(cout, "upsample3d" if temporal[level] else "upsample2d", cout // 2))
    return nn.ModuleList(layers)


def build_decoder(cfg: VAEConfig, out_channels: int = 3) -> CausalCoder:
    """Raw latents (B, z, T, h, w) -> video (B, 3, 1+4(T-1), 8h, 8w), before the clamp."""
    dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    return CausalCoder(
        CausalConv3d(cfg.z_dim, dims[0], 3, padding=1), ("upsamples", _up_stages(cfg, dims)),
        middle(dims[0]), head(dims[-1], out_channels), middle_first=True,
    )
