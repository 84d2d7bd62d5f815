"""The Wan video VAE: normalised encode/decode with causal chunking, a frame cache and tiling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wanflow.errors import ModelInputError
from wanflow.models.vae import wan21, wan22
from wanflow.models.vae.config import VAEConfig
from wanflow.models.vae.frame_cache import FrameCache
from wanflow.models.vae.layers import CausalConv3d
from wanflow.models.vae.normalization import denormalize, normalize
from wanflow.models.vae.tiling import Progress, Tile, TileSpec, plan_tiles, run_tiled

_BUILDERS = {"wan2.1": wan21, "wan2.2": wan22}


class VideoVAE(nn.Module):
    """Wan2.1 or Wan2.2 VAE (by config); module names equal the official checkpoint keys."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        arch = _BUILDERS[config.version]
        z = config.z_dim
        self.encoder = arch.build_encoder(config)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # moments -> (mu, log_var)
        self.conv2 = CausalConv3d(z, z, 1)  # latents -> decoder input
        self.decoder = arch.build_decoder(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    # ------------------------------------------------------------------ public API

    def encode(self, video: Tensor, *, tile: TileSpec | None = None, sample: bool = False,
               generator: torch.Generator | None = None, progress: Progress | None = None) -> Tensor:
        """Video (B, 3, 1+4k, H, W) in [-1, 1] -> normalised fp32 latents (B, z, 1+k, H/s, W/s).

        Returns the posterior mean, or a sample drawn with `generator` when `sample` is set.
        """
        self._check_video(video)
        if sample and generator is None:
            raise ModelInputError("encode(sample=True) needs a seeded torch.Generator as `generator`.")
        mu, log_var = self.moments(video, tile=tile, progress=progress)
        if sample:
            std = torch.exp(0.5 * log_var.clamp(-30.0, 20.0))
            noise = torch.randn(mu.shape, generator=generator, device=generator.device)
            mu = mu + std * noise.to(mu.device)
        return normalize(mu, self.config.mean, self.config.std)

    def decode(self, latents: Tensor, *, tile: TileSpec | None = None,
               progress: Progress | None = None) -> Tensor:
        """Normalised latents (B, z, T, h, w) -> fp32 video (B, 3, 1+4(T-1), h*s, w*s) in [-1, 1]."""
        self._check_latents(latents)
        raw = denormalize(latents, self.config.mean, self.config.std)
        return self.decode_raw(raw, tile=tile, progress=progress).clamp_(-1.0, 1.0)

    # ------------------------------------------------------------------ raw passes

    @torch.no_grad()
    def moments(self, video: Tensor, *, tile: TileSpec | None = None, chunked: bool = True,
                progress: Progress | None = None) -> tuple[Tensor, Tensor]:
        """Raw (mu, log_var) in fp32; `chunked=False` runs one uncached pass over the whole clip."""
        s = self.config.spatial_compression
        tiles = self._tiles(video.shape[-2] // s, video.shape[-1] // s, tile)
        fn = self._encode_chunked if chunked else self._encode_full
        out = run_tiled(fn, video.to(self.dtype), tiles, in_scale=s, out_scale=1, progress=progress)
        mu, log_var = out.float().chunk(2, dim=1)
        return mu, log_var

    @torch.no_grad()
    def decode_raw(self, raw: Tensor, *, tile: TileSpec | None = None, chunked: bool = True,
                   progress: Progress | None = None) -> Tensor:
        """Raw latents -> fp32 video before the clamp (for parity checks and blending)."""
        s = self.config.spatial_compression
        tiles = self._tiles(raw.shape[-2], raw.shape[-1], tile)
        fn = self._decode_chunked if chunked else self._decode_full
        return run_tiled(fn, raw.to(self.dtype), tiles, in_scale=1, out_scale=s, progress=progress).float()

    def _encode_chunked(self, video: Tensor) -> Tensor:
        """Frame 0 alone, then groups of 4, carrying the frame cache: memory does not grow with T."""
        x = self._patchify(video)
        cache, step = FrameCache(self.encoder.slots), self.config.temporal_compression
        chunks = [x[:, :, :1]] + [x[:, :, i:i + step] for i in range(1, x.shape[2], step)]
        return self.conv1(torch.cat([self.encoder(c, cache) for c in chunks], dim=2))

    def _encode_full(self, video: Tensor) -> Tensor:
        return self.conv1(self.encoder(self._patchify(video)))

    def _decode_chunked(self, raw: Tensor) -> Tensor:
        """One latent frame at a time, carrying the frame cache."""
        x, cache = self.conv2(raw), FrameCache(self.decoder.slots)
        out = torch.cat([self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])], dim=2)
        return self._unpatchify(out)

    def _decode_full(self, raw: Tensor) -> Tensor:
        return self._unpatchify(self.decoder(self.conv2(raw)))

    def _patchify(self, x: Tensor) -> Tensor:
        p = self.config.patch_size
        return x if p == 1 else wan22.patchify(x, p)

    def _unpatchify(self, x: Tensor) -> Tensor:
        p = self.config.patch_size
        return x if p == 1 else wan22.unpatchify(x, p)

    def _tiles(self, h: int, w: int, tile: TileSpec | None) -> list[Tile]:
        """The work items over an (h, w) latent grid: one tile covering it all when untiled."""
        return plan_tiles(h, w, tile if tile is not None else TileSpec((h, w), (h, w)))

    # ------------------------------------------------------------------ input checks

    def _check_video(self, video: Tensor) -> None:
        """Shape and values of a video, checked before any work."""
        cfg, s = self.config, self.config.spatial_compression
        _check_5d("video", video, 3, "(B, 3, T, H, W) in [-1, 1]")
        t, h, w = video.shape[2:]
        k = cfg.temporal_compression
        if (t - 1) % k:
            raise ModelInputError(
                f"video has {t} frames: the {cfg.version} VAE needs 1 + {k}n frames "
                f"(e.g. {1 + (t - 1) // k * k} or {1 + ((t - 1) // k + 1) * k}); trim or pad the clip."
            )
        if h % s or w % s:
            raise ModelInputError(
                f"video is {h}x{w} (HxW): the {cfg.version} VAE needs both divisible by {s} "
                f"(e.g. {h // s * s}x{w // s * s}); resize or crop it."
            )
        _check_finite("video", video)

    def _check_latents(self, latents: Tensor) -> None:
        z = self.config.z_dim
        _check_5d("latents", latents, z, f"(B, {z}, T, h, w) for the {self.config.version} VAE")
        _check_finite("latents", latents)


def _check_5d(name: str, x: Tensor, channels: int, expected: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 5 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ModelInputError(f"{name} has shape {got}: expected {expected}.")


def _check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ModelInputError(f"{name} holds {bad} NaN/inf values; check what produced it.")
