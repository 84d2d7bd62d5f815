"""A speech-to-video training sample: one clip, its speech, reference and pose, as DiffSynth trains it.

DiffSynth trains Wan2.2-S2V-14B on one clip per sample (no clip loop): the clip's latent x0, the
reference image's latent put in latent frame 0 of the noisy latents and kept clean, the first
clip's audio buckets (``frames − 1`` video frames of the recording), the pose video's latents
for those frames (none: zero latents) and no motion context (its motion tokens dropped, as the
first clip of a generation drops them). The DiT reads frame 0 as its reference and predicts the
frames after it; the loss covers those frames only (``wanflow.train.batch``).

The speech and reference encodes are the inference steps (``s2v_encode``), wrapped per sample
(``train_conditioning``); the pose encode reads the clip's own frames: the first ``frames − 1``
frames of the pose video at the sample's size, as the clip itself is read (DiffSynth's dataset
reads a pose video as it reads the clip, never resampling its frame rate). A motion video is
not a training input: DiffSynth's training forward has no way to take one from a dataset
column, and the dataset refuses the column.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.steps.cond_s2v import POSE_NODE
from wanflow.steps.conditioning import ENCODE_READS, encode

#: The roles of the S2V conditioners (``conditioners.kinds``) as a sample's encodes arrive.
AUDIO, REFERENCE, POSE, MOTION = "s2v_audio", "s2v_reference", "s2v_pose", "s2v_motion"
ROLES = frozenset({AUDIO, REFERENCE, POSE, MOTION})


def _pose_node(job: Any, declared: Any) -> StepSpec | None:
    if not job.given("s2v_pose_video"):
        return None
    step = EncodeS2VTrainPose(job.vae_version, **job.placed("vae"))
    return StepSpec(POSE_NODE, step, files={"s2v_pose_video": job.file("s2v_pose_video")}, weights=job.vae_weight())


def _no_motion(job: Any, declared: Any) -> None:
    """A sample has no motion context: its motion tokens are dropped, so nothing is encoded."""


#: Kind -> the node builder a training sample uses instead of the inference one.
TRAIN_NODES: Mapping[str, Any] = {"s2v-pose": _pose_node, "s2v-motion": _no_motion}


@attrs.frozen
class EncodeS2VTrainPose:
    """"latents" (1, 16, (F − 1)/4, h, w): the pose latents of one training clip of F frames.

    The first F − 1 frames of the pose video at the sample's size, a copy of the first in front
    whose latent is dropped (DiffSynth's ``process_pose_cond`` for one clip)."""

    vae_version: str
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-s2v-train-pose"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.steps.media import video_tensor

        p = ctx.params
        clip = int(p["video.frames"]) - 1
        pixels = video_tensor(ctx.file("s2v_pose_video"), clip, p["video.width"], p["video.height"])
        if pixels.shape[1] < clip:
            raise ValueError(f"the pose video has {pixels.shape[1]} frames, fewer than the clip's {clip}")
        led = torch.cat([pixels[:, :1], pixels], dim=1)  # (3, 1 + F − 1, H, W)
        return {"latents": encode(self, ctx, led)[:, :, 1:].contiguous()}


def sample_tensors(found: Mapping[str, Mapping[str, Any]], x0: Any) -> dict[str, Any]:
    """{"x0", "extras"}: x0 with the reference's latent as its frame 0 (the clean frame the DiT
    reads as its reference) and the DiT's S2V inputs for the clip (batch 1)."""
    import torch

    from wanflow.models.s2v import S2VExtras

    frames = x0.shape[2]
    clip = (frames - 1) * 4  # the clip's video frames after the first: frames − 1
    buckets = found[AUDIO]["buckets"][..., :clip]
    reference = found[REFERENCE]["latent"].float()
    pose = found[POSE]["latents"] if POSE in found else None
    extras = S2VExtras(audio=buckets.float(), ref_latent=reference, pose=pose)
    return {"x0": torch.cat([reference, x0[:, :, 1:]], dim=2), "extras": extras}
