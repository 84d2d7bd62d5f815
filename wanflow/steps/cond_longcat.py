"""longcat-frames: the conditioning frames of a LongCat-Video continuation, VAE-encoded once.

The authors' ``generate_vc`` continues a video from its last ``num_cond_frames`` frames (13 in
their demo; DiffSynth's example passes 17), the video first brought to the output's frame rate
by keeping every stride-th frame (``longcat_frames``): those frames, resized and centre-cropped
to the clip's size like every input video, are encoded by the Wan2.1 VAE (4n+1 frames -> n+1
latent frames) and written as the first latent frames of the clip, where they stay clean. The
step's key holds the video's digest, the frame count, the frame rate, the size and the VAE's
settings, never the clip's length or the sampler's: a longer clip or another guidance reuses
the encode.

Image-to-video (the authors' ``generate_i2v``) is the same conditioning with one frame: the
``[inputs].image``, resized and centre-cropped to the clip's size, is VAE-encoded alone into one
latent frame held clean as the clip's first (``encode-conditioning:longcat-image``; its key holds
the image's digest, the size and the VAE's settings).

The latents are the VAE posterior's sample (the authors') or its mean (DiffSynth's), as
``[inputs].longcat_cond_latents`` or the solver says (``steps/longcat_posterior.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.errors import ModelInputError
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.conditioning import VAE_READS
from wanflow.steps.longcat_frames import (
    frame_stride,
    kept_indices,
    needed_frames,
    source_rate,
)
from wanflow.steps.longcat_posterior import encode_latents, posterior_field, stream_field
from wanflow.steps.text import RUNTIME_READS

NODE = "encode-conditioning:longcat-frames"
#: The node of image-to-video's one conditioning frame.
IMAGE_NODE = "encode-conditioning:longcat-image"
#: What the encode reads: the frames it keeps (how many, at which rate), their size, the VAE's
#: tiling and the runtime.
READS = ("inputs.longcat_cond_frames", "video.fps", "video.width", "video.height", *VAE_READS, *RUNTIME_READS)


def last_frames(path: Path, frames: int, fps: int, width: int, height: int) -> Any:
    """(3, F, H, W) in [-1, 1]: the video's last ``frames`` frames at ``fps`` (every stride-th
    frame, ``longcat_frames``), resized and centre-cropped."""
    import torch

    from wanflow.output import load_video, to_model_video
    from wanflow.output.probe import video_frames

    st = path.stat()
    count, _ = video_frames(path, 10**7, st.st_size, st.st_mtime_ns)
    stride = frame_stride(source_rate(path), fps)
    if count < needed_frames(frames, stride):
        raise ModelInputError(f"{path}: [inputs].longcat_video has {count} frames, {len(range(0, count, stride))} "
                              f"at [video].fps = {fps}, fewer than the {frames} of [inputs].longcat_cond_frames; "
                              "use a longer video or fewer conditioning frames")
    every = load_video(path, count, width, height)  # (n, H, W, 3) uint8
    return torch.from_numpy(to_model_video(every[kept_indices(count, stride, frames)]))


@attrs.frozen
class EncodeLongCatVideo:
    """"latents" (1, z, k, h, w): the conditioning frames' VAE latents (k = (frames − 1)/4 + 1)."""

    vae_version: str  # "wan2.1"
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    posterior: str = posterior_field()  # "mean" or "sample" (steps.longcat_posterior)
    stream: str = stream_field()  # the node whose ε a sample draws
    kind: str = "encode-longcat-frames"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = READS

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        pixels = last_frames(ctx.file("longcat_video"), p["inputs.longcat_cond_frames"], p["video.fps"],
                             p["video.width"], p["video.height"])
        return {"latents": encode_latents(self, ctx, pixels).contiguous()}  # (1, z, k, h, w)


@attrs.frozen
class EncodeLongCatImage:
    """"latents" (1, z, 1, h, w): the VAE latent of the image as the clip's first frame."""

    vae_version: str  # "wan2.1"
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    posterior: str = posterior_field()  # "mean" or "sample" (steps.longcat_posterior)
    stream: str = stream_field()  # the node whose ε a sample draws
    kind: str = "encode-longcat-image"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("video.width", "video.height", *VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        from wanflow.steps.media import image_tensor

        p = ctx.params
        pixels = image_tensor(ctx.file("image"), p["video.width"], p["video.height"])  # (3, 1, H, W)
        return {"latents": encode_latents(self, ctx, pixels).contiguous()}  # (1, z, 1, h, w)


def _node(job: Any, declared: Any) -> StepSpec | None:
    if job.given("longcat_video") and job.given("image"):
        raise ModelInputError("LongCat-Video continues a video or starts from an image, not both: give "
                              "[inputs].longcat_video or [inputs].image")
    if job.given("image"):  # image-to-video: one conditioning frame
        step = EncodeLongCatImage(job.vae_version, **job.placed("vae"))
        return StepSpec(IMAGE_NODE, step, files={"image": job.file("image")}, weights=job.vae_weight())
    if not job.given("longcat_video"):
        return None  # text-to-video
    step = EncodeLongCatVideo(job.vae_version, **job.placed("vae"))
    return StepSpec(NODE, step, files={"longcat_video": job.file("longcat_video")}, weights=job.vae_weight())


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    """The conditioning latents as the clip's first frames, held clean (LongCat's denoise step
    reads them as its KV cache's frames)."""
    return call.with_clamp(tensor(tensors, "latents", "longcat"))


LONGCAT_FRAMES = Implementation(_node, _hand_off)
