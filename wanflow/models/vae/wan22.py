"""The Wan2.2 VAE: 2x2 pixel patchify, nested blocks, and parameter-free residual shortcuts
(AvgDown3D / DupUp3D) that move pixels between space/time and channels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wanflow.models.vae.config import VAEConfig
from wanflow.models.vae.frame_cache import FrameCache
from wanflow.models.vae.layers import CausalCoder, CausalConv3d, ResidualBlock, Resample, head, middle


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, T, H, W) -> (B, C*p*p, T, H/p, W/p); channel order (c, w-sub, h-sub) as the official."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p)  # (B, C, T, h, q, w, r)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: Tensor, p: int) -> Tensor:
    """The inverse of `patchify`."""
    b, cpp, t, h, w = x.shape
    x = x.view(b, cpp // (p * p), p, p, t, h, w)  # (B, C, r, q, T, h, w)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


class AvgDown3D(nn.Module):
    """Shortcut for a downsampling block: fold (t, h, w) blocks into channels, average groups."""

    def __init__(self, cin: int, cout: int, ft: int, fs: int):
        super().__init__()
        self.cout, self.ft, self.fs = cout, ft, fs
        self.group = cin * ft * fs * fs // cout

    def forward(self, x: Tensor) -> Tensor:
        ft, fs = self.ft, self.fs
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))  # front-pad time to a multiple
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, ft, fs, fs, t, h, w)
        x = x.reshape(b, self.cout, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)  # (B, Cout, T/ft, H/fs, W/fs)


class DupUp3D(nn.Module):
    """Shortcut for an upsampling block: repeat channels and unfold them into (t, h, w) blocks."""

    def __init__(self, cin: int, cout: int, ft: int, fs: int):
        super().__init__()
        self.cout, self.ft, self.fs = cout, ft, fs
        self.repeats = cout * ft * fs * fs // cin

    def forward(self, x: Tensor, first_chunk: bool) -> Tensor:
        ft, fs = self.ft, self.fs
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.view(b, self.cout, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.cout, t * ft, h * fs, w * fs)  # (B, Cout, T*ft, H*fs, W*fs)
        return x[:, :, ft - 1:] if first_chunk else x  # the clip's frame 0 yields one frame


class DownBlock(nn.Module):
    """Residual blocks then a downsample, plus the AvgDown3D shortcut around them."""

    def __init__(self, cin: int, cout: int, blocks: int, temporal: bool, spatial: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(cin, cout, 2 if temporal else 1, 2 if spatial else 1)
        layers: list[nn.Module] = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(blocks)]
        if spatial:
            layers.append(Resample(cout, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.ModuleList(layers)

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        shortcut = self.avg_shortcut(x)  # taken first so that `x` can be freed early
        for layer in self.downsamples:
            x = layer(x, cache)
        return x.add_(shortcut)


class UpBlock(nn.Module):
    """Residual blocks then an upsample (keeping the width), plus the DupUp3D shortcut."""

    def __init__(self, cin: int, cout: int, blocks: int, temporal: bool, spatial: bool):
        super().__init__()
        self.avg_shortcut = DupUp3D(cin, cout, 2 if temporal else 1, 2) if spatial else None
        layers: list[nn.Module] = [ResidualBlock(cin if i == 0 else cout, cout) for i in range(blocks + 1)]
        if spatial:
            layers.append(Resample(cout, "upsample3d" if temporal else "upsample2d", cout))
        self.upsamples = nn.ModuleList(layers)

    def forward(self, x: Tensor, cache: FrameCache | None = None) -> Tensor:
        first = self.upsamples[-1].first_chunk(cache) if self.avg_shortcut is not None else True
        out = x
        for layer in self.upsamples:
            out = layer(out, cache)
        return out if self.avg_shortcut is None else out.add_(self.avg_shortcut(x, first))


def build_encoder(cfg: VAEConfig, in_channels: int = 3) -> CausalCoder:
    """Patchified video (B, 3p^2, T, H/p, W/p) -> moments (B, 2z, 1+(T-1)//4, H/16, W/16)."""
    dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
    last = len(cfg.dim_mult) - 1
    blocks = nn.ModuleList(
        DownBlock(cin, cout, cfg.num_res_blocks, level < last and cfg.temporal_downsample[level],
                  level < last)
        for level, (cin, cout) in enumerate(zip(dims[:-1], dims[1:]))
    )
    return CausalCoder(
        CausalConv3d(in_channels * cfg.patch_size**2, dims[0], 3, padding=1), ("downsamples", blocks),
        middle(dims[-1]), head(dims[-1], 2 * cfg.z_dim), middle_first=False,
    )


def build_decoder(cfg: VAEConfig, out_channels: int = 3) -> CausalCoder:
    """Raw latents (B, z, T, h, w) -> patchified video (B, 3p^2, 1+4(T-1), 8h, 8w), pre-clamp."""
    dims = [cfg.decoder_dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    temporal, last = cfg.temporal_downsample[::-1], len(cfg.dim_mult) - 1
    blocks = nn.ModuleList(
        UpBlock(cin, cout, cfg.num_res_blocks, level < last and temporal[level], level < last)
        for level, (cin, cout) in enumerate(zip(dims[:-1], dims[1:]))
    )
    return CausalCoder(
        CausalConv3d(cfg.z_dim, dims[0], 3, padding=1), ("upsamples", blocks),
        middle(dims[0]), head(dims[-1], out_channels * cfg.patch_size**2), middle_first=True,
    )
