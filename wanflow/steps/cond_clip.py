"""clip-tokens: CLIP tokens of the start (and end) image, joined to every cross-attention's context.

Wan2.1 I2V and FLF2V encode every given image; Wan-Fun InP encodes the start image alone (its
end image reaches the model only through the image channels); Wan2.1-Fun Control encodes the
reference image when there is one, else the start image. The Fun models take zero tokens when no
image is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.engine.step import StepSpec
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.cond_zeros import Zeros
from wanflow.steps.image import CLIP_TOKENS, CLIP_WIDTH, EncodeImage

NODE = "encode-image"


def _roles(job: Any, images: str) -> tuple[str, ...]:
    """The image inputs CLIP encodes: the reference alone (``"reference"``, when given), else the
    start image (and the end image for ``"given"``); () when there is none."""
    if images == "reference" and job.given("reference_image"):
        return ("reference_image",)
    if not job.given("image"):
        return ()
    return ("image", "end_image") if images == "given" and job.given("end_image") else ("image",)


def _node(job: Any, declared: Any) -> StepSpec | None:
    roles = _roles(job, declared.option("images"))
    if not roles:
        if declared.option("without_image") == "skip":
            return None
        return StepSpec(NODE, Zeros("clip", (1, CLIP_TOKENS, CLIP_WIDTH)))
    if "image_encoder" not in job.weights:
        raise ValueError(f"family {job.family.name!r} declares clip-tokens but has no image_encoder "
                         "component to encode with")
    encoder = {"image_encoder": next(iter(job.weights["image_encoder"].values()))}
    step = EncodeImage(roles, **job.placed("image_encoder"))
    return StepSpec(NODE, step, files={r: job.file(r) for r in roles}, weights=encoder)


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_tokens(tensor(tensors, "clip", "clip"))  # (n, 257, 1280)


CLIP_TOKENS_KIND = Implementation(_node, _hand_off)
