"""encode-image: CLIP tokens of the given images (the clip-tokens conditioner's step)."""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.media import image_tensor
from wanflow.steps.text import RUNTIME_READS

#: Tokens per image and their width: the penultimate layer of CLIP ViT-H/14 at 224 px.
CLIP_TOKENS, CLIP_WIDTH = 257, 1280


@attrs.frozen
class EncodeImage:
    """(n, 257, 1280) penultimate CLIP tokens of each image role, in order (image, end_image)."""

    roles: tuple[str, ...] = ("image",)
    dtype: str = "auto"  # [models.<component>].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.<component>].device; "cpu" runs it on the CPU
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-image"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("video.width", "video.height", *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        device, dtype = component_runtime(ctx.params, self.dtype, self.device)
        w, h = ctx.params["video.width"], ctx.params["video.height"]
        images = torch.stack([image_tensor(ctx.file(r), w, h)[:, 0] for r in self.roles])  # (n, 3, H, W)
        encoder = model_pool.image_encoder(ctx.weight("image_encoder"), dtype, device, self.residency)
        return {"clip": encoder.encode(images).cpu().contiguous()}  # (n, 257, 1280)
