"""The image conditioners of the base families: I2V channels and TI2V's first-frame latent.

image-channels (Wan2.1 I2V/FLF2V, Wan2.2 I2V-A14B, Wan-Fun InP and, after the control latents,
Wan2.2 Fun Control): [mask (4), VAE([start, zeros…(, end)])] joined to the noisy latent; the
mask marks the given pixel frames four per latent frame, so with an end image the last latent
frame reads [0, 0, 0, 1]. first-frame-latent (TI2V-5B): the start image's latent is latent
frame 0, put back after every step, its tokens at timestep 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.engine.step import StepSpec
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.cond_zeros import Zeros
from wanflow.steps.conditioning import EncodeConditioning

NODE = "encode-conditioning:image"


def _image_roles(job: Any) -> tuple[str, ...]:
    return ("image", "end_image") if job.given("end_image") else ("image",)


def _channels_node(job: Any, declared: Any) -> StepSpec | None:
    if not job.given("image"):
        if declared.option("without_image") == "skip":
            return None
        return StepSpec(NODE, Zeros("y", job.latent_shape(4 + job.z_dim)))
    roles = _image_roles(job)
    step = EncodeConditioning("y", job.vae_version, roles, **job.placed("vae"))
    return StepSpec(NODE, step, files={r: job.file(r) for r in roles}, weights=job.vae_weight())


def _channels_hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return call.with_channels(tensor(tensors, "y", "y"))  # (1, 4 + z, T, h, w)


def _first_frame_node(job: Any, declared: Any) -> StepSpec | None:
    if not job.given("image"):
        return None  # text-to-video: no first frame to keep
    step = EncodeConditioning("z0", job.vae_version, ("image",), **job.placed("vae"))
    return StepSpec(NODE, step, files={"image": job.file("image")}, weights=job.vae_weight())


def _first_frame_hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    z0 = tensor(tensors, "z0", "z0")  # (1, z, 1, h, w)
    return call.with_clamp(z0).with_clean_frames(z0.shape[2])


IMAGE_CHANNELS = Implementation(_channels_node, _channels_hand_off)
FIRST_FRAME_LATENT = Implementation(_first_frame_node, _first_frame_hand_off)
