"""vap-video: Video-As-Prompt's reference video, as the reference stream reads it.

The reference video ("the prompt": an effect, a motion, a camera move to follow) is resampled to
the clip's frame count by picking frames evenly across it (the authors' ``frames_selection =
"evenly"``: indices ``linspace(0, n - 1, F)`` rounded down), each frame resized and
centre-cropped to the video's size like every input video. The stream reads, on the output's
latent grid, the video's VAE latent (16 channels) then its first frame's I2V condition (mask 4,
VAE latent of [first frame, grey…] 16), and the CLIP tokens of that first frame. A video with
fewer frames than the clip is refused at validation (frames would repeat and its motion slow).

A training sample reads its reference video as DiffSynth's dataset reads every video column of a
row, the clip included: its first F frames (``selection = "first"``, ``as_training``); a
reference video of exactly F frames gives the same frames either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.errors import ModelInputError
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.conditioning import ENCODE_READS, encode, frame_mask
from wanflow.steps.media import padded_clip

NODE = "encode-conditioning:vap-video"


def evenly(count: int, frames: int) -> list[int]:
    """The indices of ``frames`` frames spread evenly over ``count``, first and last included."""
    import torch

    return torch.linspace(0, count - 1, frames).long().tolist()


#: How the reference video's F frames are picked: "evenly" across it (the authors' inference), or
#: its "first" F (DiffSynth's training dataset, which reads every video column as a prefix).
SELECTIONS = ("evenly", "first")


def reference_clip(path: Path, frames: int, width: int, height: int, selection: str = "evenly") -> Any:
    """(3, F, H, W) in [-1, 1]: ``frames`` frames picked evenly across the whole video, or its first."""
    import torch

    from wanflow.output import load_video, to_model_video
    from wanflow.output.probe import video_frames

    if selection not in SELECTIONS:
        raise ValueError(f"reference_clip: selection {selection!r}; expected one of {SELECTIONS}")
    st = path.stat()
    count, _ = video_frames(path, 10**7, st.st_size, st.st_mtime_ns)
    if count < frames:
        raise ModelInputError(f"{path}: [inputs].vap_video has {count} frames, fewer than the {frames} of "
                              "[video].frames; use a longer reference video or fewer frames")
    if selection == "first":
        return torch.from_numpy(to_model_video(load_video(path, frames, width, height)[:frames]))
    every = load_video(path, count, width, height)  # (n, H, W, 3) uint8
    return torch.from_numpy(to_model_video(every[evenly(count, frames)]))


@attrs.frozen
class EncodeVapVideo:
    """The reference stream's inputs: "latents" (1, 36, T, h, w) and "clip" (1, 257, 1280)."""

    vae_version: str  # "wan2.1"
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    clip_dtype: str = "auto"  # [models.image_encoder].dtype
    clip_device: str = "auto"  # [models.image_encoder].device
    selection: str = "evenly"  # which frames of the reference video (``SELECTIONS``)
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-vap-video"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        frames = p["video.frames"]
        pixels = reference_clip(ctx.file("vap_video"), frames, p["video.width"], p["video.height"], self.selection)
        first = pixels[:, :1]  # (3, 1, H, W)
        latent = encode(self, ctx, pixels)  # (1, z, T, h, w)
        condition = encode(self, ctx, padded_clip([first], frames))  # (1, z, T, h, w)
        mask = frame_mask(frames, *latent.shape[-2:], last=False)[None]  # (1, 4, T, h, w)
        device, dtype = component_runtime(p, self.clip_dtype, self.clip_device)
        encoder = model_pool.image_encoder(ctx.weight("image_encoder"), dtype, device, self.residency)
        clip = encoder.encode(first[:, 0][None])  # (1, 257, 1280)
        return {"latents": torch.cat([latent, mask, condition], dim=1).contiguous(),
                "clip": clip.float().cpu().contiguous()}


def with_vap(call: ModelCall, **fields: Any) -> ModelCall:
    """The model call with reference-stream fields of the DiT's extras set (``VapExtras``)."""
    from wanflow.models.vap_extras import VapExtras

    return attrs.evolve(call, extras=VapExtras.joined(call.extras, **fields))


def _node(job: Any, declared: Any) -> StepSpec:
    if not job.given("vap_video"):
        raise ModelInputError(f"{job.resolved.path}: the family {job.family.name} is prompted by a reference "
                              "video, and [inputs].vap_video is not set; set it to a video of at least "
                              f"[video].frames = {job.values['video.frames']} frames")
    if "image_encoder" not in job.weights:
        raise ValueError(f"family {job.family.name!r} declares vap-video but has no image_encoder component")
    weights = job.vae_weight() | {"image_encoder": next(iter(job.weights["image_encoder"].values()))}
    step = EncodeVapVideo(job.vae_version, **job.placed("vae"), clip_dtype=job.dtype("image_encoder"),
                          clip_device=job.device("image_encoder"))
    return StepSpec(NODE, step, files={"vap_video": job.file("vap_video")}, weights=weights)


def as_training(spec: StepSpec) -> StepSpec:
    """A sample's reference-video node: the video's first F frames, as DiffSynth's training reads it."""
    return attrs.evolve(spec, step=attrs.evolve(spec.step, selection="first"))


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    return with_vap(call, vap_latents=tensor(tensors, "latents", "vap"), vap_clip=tensor(tensors, "clip", "vap"))


VAP_VIDEO = Implementation(_node, _hand_off)
