"""encode-sample: one encoder's view of one training sample, at the sample's own size.

A node per sample and encoder, keyed by the file's content (its digest, as every input file),
the sample's target size and frame choice (the step's configuration) and the encoder's weights:
a changed crop or encoder re-encodes exactly the samples it touches, and nothing else does.
``x0``: the clip's VAE latent (an image is a one-frame clip). ``y``: the I2V conditioning of its
first (and last) frame: a frame mask and the latent of [image, zeros…(, end image)], as at
inference. ``clip``: CLIP tokens of those frames (Wan2.1 I2V / FLF2V).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import structlog

from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.conditioning import VAE_READS, frame_mask, tile_spec
from wanflow.steps.text import RUNTIME_READS
from wanflow.train.metadata import IMAGE_SUFFIXES

log = structlog.get_logger(__name__)
What = Literal["x0", "y", "clip"]


def _has_file(ctx: Any, role: str) -> bool:
    try:
        ctx.file(role)
    except KeyError:
        return False
    return True


@attrs.frozen
class EncodeSample:
    """The ``what`` encode of one sample's files (roles ``media``, ``image``, ``end_image``)."""

    what: What
    frames: int
    height: int
    width: int
    #: (role, frame): the image files (``frame`` None) or frames of the clip the encode reads.
    images: tuple[tuple[str, int | None], ...] = ()
    vae_version: str = "wan2.1"
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-sample"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        """The encode, or ``{"unreadable": …}`` when the sample's media cannot be decoded (a file
        damaged after validation): training skips that sample and says so, rather than failing
        hours in. The marker is keyed by the file's content, so a repaired file encodes anew."""
        import torch

        from wanflow.errors import ModelInputError

        try:
            return self._encode(ctx)
        except (ModelInputError, OSError, RuntimeError, ValueError) as exc:
            files = ", ".join(str(ctx.file(r)) for r in ("media", "image", "end_image") if _has_file(ctx, r))
            log.warning("train.sample_unreadable", files=files, error=str(exc).splitlines()[0][:200],
                        note="the sample is left out of training")
            return {"unreadable": torch.ones(1)}

    def _encode(self, ctx: Any) -> dict[str, Any]:
        import torch

        device, dtype = component_runtime(ctx.params, self.dtype, self.device)
        if self.what == "clip":
            frames = torch.stack([self._frame(ctx, role, frame)[:, 0] for role, frame in self.images])
            encoder = model_pool.image_encoder(ctx.weight("image_encoder"), dtype, device, self.residency)
            return {"clip": encoder.encode(frames.to(device=device, dtype=dtype)).float().cpu().contiguous()}
        vae = model_pool.vae(ctx.weight("vae"), self.vae_version, dtype, device, self.residency)
        pixels = self._clip(ctx) if self.what == "x0" else self._conditioning_pixels(ctx)
        with torch.no_grad():
            latent = vae.encode(pixels[None].to(device=device, dtype=dtype),
                                tile=tile_spec(ctx.params)).float().cpu()
        if self.what == "x0":
            return {"x0": latent.contiguous()}
        mask = frame_mask(self.frames, *latent.shape[-2:], last=len(self.images) > 1)
        return {"y": torch.cat([mask[None], latent], dim=1).contiguous()}

    def _clip(self, ctx: Any) -> Any:
        from wanflow.steps.media import image_tensor, video_tensor

        path = ctx.file("media")
        if self.frames == 1 and path.suffix.lower() in IMAGE_SUFFIXES:
            return image_tensor(path, self.width, self.height)
        return video_tensor(path, self.frames, self.width, self.height)

    def _frame(self, ctx: Any, role: str, frame: int | None) -> Any:
        """(3, 1, H, W): an image file, or one frame of a video."""
        from wanflow.steps.media import image_tensor, video_tensor

        if frame is None:
            return image_tensor(ctx.file(role), self.width, self.height)
        return video_tensor(ctx.file(role), frame + 1, self.width, self.height)[:, frame:frame + 1]

    def _conditioning_pixels(self, ctx: Any) -> Any:
        import torch

        images = [self._frame(ctx, role, frame) for role, frame in self.images]
        gap = torch.zeros(3, self.frames - len(images), self.height, self.width)
        return torch.cat([images[0], gap, *images[1:]], dim=1)
