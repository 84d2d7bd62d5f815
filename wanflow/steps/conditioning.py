"""encode-conditioning: VAE latents of input images or a video, the engine step of the base kinds.

Three layouts of the clip the VAE encodes, one per base conditioner kind: ``y`` (image-channels:
Wan2.1 I2V/FLF2V, Wan2.2 I2V-A14B, Wan-Fun InP) a 4-channel mask marking the given frames, then
the latent of [image, zeros…(, end image)]; ``z0`` (first-frame-latent: TI2V-5B) the first
frame's latent; ``x0`` (source-latent: video-to-video) the input video's latent, or a still
image's held for every frame. The helpers here are shared by every conditioner that encodes.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.media import image_tensor, padded_clip, video_tensor
from wanflow.steps.text import RUNTIME_READS

Mode = Literal["y", "z0", "x0"]
VAE_READS = ("vae.tiled", "vae.tile_size", "vae.tile_stride")
#: What every step that VAE-encodes conditioning reads: the clip's size, tiling and runtime.
ENCODE_READS = ("video.width", "video.height", "video.frames", *VAE_READS, *RUNTIME_READS)


def tile_spec(params: Any) -> Any:
    """The recipe's VAE tiling, or None for one pass over the whole frame."""
    from wanflow.models.vae import TileSpec

    if not params["vae.tiled"]:
        return None
    return TileSpec(tuple(params["vae.tile_size"]), tuple(params["vae.tile_stride"]))


def frame_mask(frames: int, height: int, width: int, last: bool) -> Any:
    """(4, T, h, w): 1 on the given pixel frames (first, and last for FLF2V), as 4 per latent frame."""
    import torch

    msk = torch.zeros(1, frames, height, width)
    msk[:, 0] = 1
    if last:
        msk[:, -1] = 1
    msk = torch.cat([msk[:, :1].repeat_interleave(4, dim=1), msk[:, 1:]], dim=1)  # (1, F+3, h, w)
    return msk.view(1, msk.shape[1] // 4, 4, height, width).transpose(1, 2)[0]  # (4, T, h, w)


def encode(step: Any, ctx: Any, pixels: Any, generator: Any = None) -> Any:
    """(1, z, T, h, w) fp32 latents of pixels (3, F, H, W) in [-1, 1], with the VAE, dtype, device
    and pool budget of ``step`` (its ``vae_version``, ``dtype``, ``device``, ``residency``): the
    posterior mean, or a posterior sample drawn from ``generator`` when one is given."""
    import torch

    device, dtype = component_runtime(ctx.params, step.dtype, step.device)
    vae = model_pool.vae(ctx.weight("vae"), step.vae_version, dtype, device, step.residency)
    with torch.no_grad():
        drawn = {} if generator is None else {"sample": True, "generator": generator}
        return vae.encode(pixels[None].to(device=device, dtype=dtype), tile=tile_spec(ctx.params),
                          **drawn).float().cpu()


@attrs.frozen
class EncodeConditioning:
    """One conditioning latent (``mode``) from the input files, encoded with the family's VAE."""

    mode: Mode
    vae_version: str  # "wan2.1" | "wan2.2"
    roles: tuple[str, ...] = ("image",)
    dtype: str = "auto"  # [models.<component>].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.<component>].device; "cpu" runs it on the CPU
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-conditioning"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        latent = encode(self, ctx, self._pixels(ctx))  # (1, z, T, h, w)
        if self.mode != "y":
            return {self.mode: latent.contiguous()}
        mask = frame_mask(ctx.params["video.frames"], *latent.shape[-2:], last=len(self.roles) > 1)
        return {"y": torch.cat([mask[None], latent], dim=1).contiguous()}  # (1, 4 + z, T, h, w)

    def _pixels(self, ctx: Any) -> Any:
        """The clip the VAE encodes: the video, the first frame alone, or image(s) padded with zeros."""
        p = ctx.params
        w, h, frames = p["video.width"], p["video.height"], p["video.frames"]
        if self.mode == "x0" and self.roles == ("video",):
            return video_tensor(ctx.file("video"), frames, w, h)
        if self.mode == "x0":  # a still image held for every frame
            return image_tensor(ctx.file(self.roles[0]), w, h).expand(3, frames, h, w)
        images = [image_tensor(ctx.file(r), w, h) for r in self.roles]  # each (3, 1, H, W)
        return images[0] if self.mode == "z0" else padded_clip(images, frames)
