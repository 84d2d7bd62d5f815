"""control-latents: the VAE latents of a Fun Control video (depth, pose, canny…).

One control frame per output frame, resized and centre-cropped like every input video; its 16
channels come first in the Fun Control layouts ([control, start] for Wan2.1, [control, mask,
start] for Wan2.2). A video shorter than the clip is refused at validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.errors import ModelInputError
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.conditioning import ENCODE_READS, encode
from wanflow.steps.media import video_tensor

NODE = "encode-conditioning:control"


@attrs.frozen
class EncodeControlVideo:
    """(1, z, T, h, w): the latents of the first ``[video].frames`` frames of the control video."""

    vae_version: str  # "wan2.1" | "wan2.2"
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-control-video"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        pixels = video_tensor(ctx.file("control_video"), p["video.frames"], p["video.width"], p["video.height"])
        return {"latents": encode(self, ctx, pixels).contiguous()}


def _node(job: Any, declared: Any) -> StepSpec:
    if not job.given("control_video"):
        raise ModelInputError(f"{job.resolved.path}: the family {job.family.name} is steered by a control "
                              "video, and [inputs].control_video is not set; set it to a video of at "
                              f"least [video].frames = {job.values['video.frames']} frames")
    step = EncodeControlVideo(job.vae_version, **job.placed("vae"))
    return StepSpec(NODE, step, files={"control_video": job.file("control_video")}, weights=job.vae_weight())


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_channels(tensor(tensors, "latents", "control"))


CONTROL_LATENTS = Implementation(_node, _hand_off)
