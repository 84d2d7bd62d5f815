"""source-latent: the latent that ``[sampler].denoising_strength < 1`` starts from.

Video-to-video keeps the input video's structure; a still image (any family that accepts one)
is held for every frame. Denoise noises it to the schedule's first σ (DiffSynth's rescaled
grid) or to that of its first kept step ("truncate").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from wanflow.engine.step import StepSpec
from wanflow.errors import ModelInputError, RecipeError
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.conditioning import EncodeConditioning

log = structlog.get_logger(__name__)
NODE = "encode-conditioning:source"


def _node(job: Any, declared: Any) -> StepSpec | None:
    strength = job.values["sampler.denoising_strength"]
    role = "video" if job.given("video") else "image" if job.given("image") else None
    if strength >= 1.0:
        if job.given("video"):
            log.warning("video.ignored", reason="denoising_strength = 1.0 starts from pure noise",
                        fix="set [sampler].denoising_strength < 1 to keep the input video's structure")
        return None
    if role is None:
        raise ModelInputError(
            f"{job.resolved.path}: [sampler].denoising_strength = {strength} keeps part of an input, "
            "but neither [inputs].video nor [inputs].image is set; set one, or use 1.0")
    if strength <= 0 and job.values["sampler.strength_schedule"] == "rescale":
        raise RecipeError([(f"{job.resolved.path}: [sampler].denoising_strength = {strength}: a grid "
                            "from σ = 0 takes no step; use a value in (0, 1], or "
                            '[sampler].strength_schedule = "truncate" to return the input unchanged')])
    step = EncodeConditioning("x0", job.vae_version, (role,), **job.placed("vae"))
    return StepSpec(NODE, step, files={role: job.file(role)}, weights=job.vae_weight())


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_start(tensor(tensors, "x0", "x0"))  # (1, z, T, h, w)


SOURCE_LATENT = Implementation(_node, _hand_off)
