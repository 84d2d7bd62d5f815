"""The speech-to-video conditioner kinds: the nodes of their cached steps (``s2v_encode``).

Their tensors are read by the S2V clip loop (``denoise_s2v``), which hands each clip its slice of
the audio and pose and the motion it rolls; the Wan denoise step never sees them, so their
hand-offs refuse to be used there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.engine.step import StepSpec
from wanflow.errors import ModelInputError
from wanflow.steps.cond_call import Implementation, ModelCall
from wanflow.steps.s2v_encode import (
    EncodeS2VAudio,
    EncodeS2VMotion,
    EncodeS2VPose,
    EncodeS2VReference,
)

AUDIO_NODE = "encode-audio"
REFERENCE_NODE = "encode-conditioning:s2v-reference"
POSE_NODE = "encode-conditioning:s2v-pose"
MOTION_NODE = "encode-conditioning:s2v-motion"


def _audio_node(job: Any, declared: Any) -> StepSpec:
    if job.given("audio_embeds"):  # the buckets precomputed: no speech encoder read
        files = {"audio": job.file("audio"), "audio_embeds": job.file("audio_embeds")}
        return StepSpec(AUDIO_NODE, EncodeS2VAudio(precomputed=True), files=files)
    if "speech_encoder" not in job.weights:
        raise ValueError(f"family {job.family.name!r} declares s2v-audio but has no speech_encoder component")
    weights = dict(job.weights["speech_encoder"])
    return StepSpec(AUDIO_NODE, EncodeS2VAudio(), files={"audio": job.file("audio")}, weights=weights)


def _reference_node(job: Any, declared: Any) -> StepSpec:
    step = EncodeS2VReference(job.vae_version, **job.placed("vae"))
    return StepSpec(REFERENCE_NODE, step, files={"image": job.file("image")}, weights=job.vae_weight())


def _pose_node(job: Any, declared: Any) -> StepSpec | None:
    from wanflow.steps.s2v_checks import clip_plan, made_clips

    if not job.given("s2v_pose_video"):
        return None
    plan = clip_plan(job.values)
    if plan is None:
        raise ModelInputError(f"{job.resolved.path}: [inputs].audio cannot be read, so the clips the pose video "
                              "is cut into are not known; run `wanflow validate` for why")
    step = EncodeS2VPose(job.vae_version, made_clips(plan.clips, job.values), **job.placed("vae"))
    return StepSpec(POSE_NODE, step, files={"s2v_pose_video": job.file("s2v_pose_video")}, weights=job.vae_weight())


def _motion_node(job: Any, declared: Any) -> StepSpec:
    given, from_reference = job.given("motion_video"), job.values["inputs.start_from_ref"] is True
    step = EncodeS2VMotion(job.vae_version, given, from_reference, **job.placed("vae"))
    files = {"motion_video": job.file("motion_video")} if given else {}
    if from_reference:  # the reference image's frames end the context: its content is in the key
        files["image"] = job.file("image")
    return StepSpec(MOTION_NODE, step, files=files, weights=job.vae_weight())


def _read_by_the_clip_loop(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    raise ModelInputError("speech-to-video's inputs are read by its clip loop (denoise-s2v), not by the Wan "
                          "denoise step; run the family through its own pipeline")


S2V_AUDIO = Implementation(_audio_node, _read_by_the_clip_loop)
S2V_REFERENCE = Implementation(_reference_node, _read_by_the_clip_loop)
S2V_POSE = Implementation(_pose_node, _read_by_the_clip_loop)
S2V_MOTION = Implementation(_motion_node, _read_by_the_clip_loop)
