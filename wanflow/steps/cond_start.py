"""start-latent: the start image's latent channels of Wan2.1 Fun Control ([control 16, start 16]).

The Fun authors encode the start image alone into latent frame 0 and leave zeros after it (as
their training did); DiffSynth encodes [image, mid-grey frames…] and keeps every frame, so its
frames 1.. hold the VAE's latents of grey (``fill = "grey"``, to reproduce a DiffSynth result).
The Wan VAE is causal, so frame 0 is the same latent either way. No start image: zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.cond_zeros import Zeros
from wanflow.steps.conditioning import ENCODE_READS, encode
from wanflow.steps.media import image_tensor, padded_clip

NODE = "encode-conditioning:start"


@attrs.frozen
class EncodeStartLatent:
    """(1, z, T, h, w): the start image's latent at frame 0, then ``fill``."""

    fill: Literal["zeros", "grey"]
    vae_version: str  # "wan2.1" | "wan2.2"
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-start-latent"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        frames, w, h = p["video.frames"], p["video.width"], p["video.height"]
        image = image_tensor(ctx.file("image"), w, h)  # (3, 1, H, W)
        if self.fill == "grey":
            return {"latents": encode(self, ctx, padded_clip([image], frames)).contiguous()}
        first = encode(self, ctx, image)  # (1, z, 1, h, w)
        rest = first.new_zeros(*first.shape[:2], (frames - 1) // 4, *first.shape[3:])
        return {"latents": torch.cat([first, rest], dim=2).contiguous()}  # (1, z, T, h, w)


def _node(job: Any, declared: Any) -> StepSpec:
    if not job.given("image"):
        return StepSpec(NODE, Zeros("latents", job.latent_shape(job.z_dim)))
    step = EncodeStartLatent(declared.option("fill"), job.vae_version, **job.placed("vae"))
    return StepSpec(NODE, step, files={"image": job.file("image")}, weights=job.vae_weight())


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_channels(tensor(tensors, "latents", "start_image"))


START_LATENT = Implementation(_node, _hand_off)
