"""reference-latent: the reference image's VAE latent that Fun V1.1 / Wan2.2 Control read through ``ref_conv``.

The reference image (a character, a product, a style) is resized and centre-cropped to the
video's size like every input image and encoded alone: one latent frame (1, 16, h, w), which the
DiT turns into tokens placed before the video's. Without a reference the Fun authors still pass
a zero latent (their training zeroed it for a share of the samples), the default; DiffSynth adds
no reference tokens at all (``without_reference = "skip"``), a condition the model never saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.cond_zeros import Zeros
from wanflow.steps.conditioning import ENCODE_READS, encode
from wanflow.steps.media import image_tensor

NODE = "encode-conditioning:reference"


@attrs.frozen
class EncodeReference:
    """(1, z, h, w): the latent of the reference image, one frame of the video's size."""

    vae_version: str  # "wan2.1" | "wan2.2"
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-reference"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        image = image_tensor(ctx.file("reference_image"), p["video.width"], p["video.height"])  # (3, 1, H, W)
        return {"reference": encode(self, ctx, image)[:, :, 0].contiguous()}  # (1, z, h, w)


def _node(job: Any, declared: Any) -> StepSpec | None:
    if not job.given("reference_image"):
        if declared.option("without_reference") == "skip":
            return None
        _, z, _, h, w = job.latent_shape(job.z_dim)
        return StepSpec(NODE, Zeros("reference", (1, z, h, w)))
    step = EncodeReference(job.vae_version, **job.placed("vae"))
    return StepSpec(NODE, step, files={"reference_image": job.file("reference_image")}, weights=job.vae_weight())


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_extras(reference=tensor(tensors, "reference", "reference"))  # (1, z, h, w)


REFERENCE_LATENT = Implementation(_node, _hand_off)
