"""Wan2.2-Animate's inputs, each a cached step and a conditioner kind: reference image, pose,
face, background, mask.

- reference: the character image letterboxed onto black at the video's size (the official
  ``padding_resize``), its VAE latent (latent frame 0 of every clip) and its CLIP tokens;
- pose: each clip's 77 pose frames, VAE-encoded clip by clip (20 latent frames each);
- face: each clip's 77 face crops, resized to the motion encoder's size, turned into face tokens
  by the DiT's own motion and face encoders (``AnimateDiT.prepare_face``), with the tokens of
  black crops (the unconditional branch of guidance) once;
- background (replacement): each clip's 77 background frames, as uint8 pixels: the clip loop
  encodes them behind the previous clip's last frames, which exist only once it has run;
- mask (replacement): each clip's "keep" mask on the latent grid, 1 − person (white in the
  mask video = the person to replace), cut at half and downsampled by nearest neighbour.

Every video is read for ``[video].frames`` frames, resized and centre-cropped like every input
video, and lengthened to whole clips by ping-pong repetition (``animate_clips``). The clip loop
(``denoise_animate``) hands clip k's slice of the reference, pose and face tensors to the DiT
through their kinds' hand-offs; it builds the condition channels itself, from the reference
latent, the background and mask and the previous clip's frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.memory import pool as model_pool
from wanflow.steps.animate_clips import ClipPlan
from wanflow.steps.component import component_runtime
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.conditioning import ENCODE_READS, encode
from wanflow.steps.text import RUNTIME_READS

#: What every step that cuts a driving video into clips reads.
CLIP_READS = ("video.frames", "inputs.overlap_frames")


def clip_plan(params: Any) -> ClipPlan:
    return ClipPlan(params["video.frames"], params["inputs.overlap_frames"])


def clip_pixels(path: Path, params: Any, width: int, height: int) -> Any:
    """(n, 77, H, W, 3) uint8: the video's clips, ping-pong padded."""
    import numpy as np

    from wanflow.output import load_video

    plan = clip_plan(params)
    frames = load_video(path, plan.frames, width, height)  # (T, H, W, 3)
    return np.stack([frames[idx] for idx in plan.indices()])


def to_signed(pixels: Any) -> Any:
    """uint8 (T, H, W, 3) → fp32 (3, T, H, W) in [-1, 1] (numpy or torch)."""
    import torch

    x = torch.as_tensor(pixels).float() / 127.5 - 1.0
    return x.permute(3, 0, 1, 2).contiguous()


def letterboxed(path: Path, width: int, height: int) -> Any:
    """(3, H, W) in [-1, 1]: the image fitted inside H×W keeping its aspect, centred on black
    (bilinear; the official ``padding_resize``)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)  # (3, h0, w0)
    h0, w0 = pixels.shape[1:]
    if h0 / w0 > height / width:
        fit_h, fit_w = height, int(height / h0 * w0)
    else:
        fit_h, fit_w = int(width / w0 * h0), width
    fitted = F.interpolate(pixels[None], size=(fit_h, fit_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.full((3, height, width), -1.0)  # black
    top, left = (height - fit_h) // 2, (width - fit_w) // 2
    canvas[:, top:top + fit_h, left:left + fit_w] = fitted
    return canvas


@attrs.frozen
class EncodeAnimateReference:
    """"latent" (1, z, 1, h, w): VAE of the letterboxed reference; "clip" (1, 257, 1280)."""

    vae_version: str
    dtype: str = "auto"  # [models.vae].dtype
    device: str = "auto"  # [models.vae].device
    clip_dtype: str = "auto"  # [models.image_encoder].dtype
    clip_device: str = "auto"  # [models.image_encoder].device
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-animate-reference"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("video.width", "video.height", "vae.tiled", "vae.tile_size", "vae.tile_stride",
                              *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        p = ctx.params
        image = letterboxed(ctx.file("reference_image"), p["video.width"], p["video.height"])  # (3, H, W)
        latent = encode(self, ctx, image[:, None])  # (1, z, 1, h, w)
        device, dtype = component_runtime(p, self.clip_dtype, self.clip_device)
        encoder = model_pool.image_encoder(ctx.weight("image_encoder"), dtype, device, self.residency)
        clip = encoder.encode(image[None])  # (1, 257, 1280)
        return {"latent": latent.contiguous(), "clip": clip.float().cpu().contiguous()}


@attrs.frozen
class EncodeAnimatePose:
    """"latents" (n, z, 20, h, w): each clip's pose frames, VAE-encoded clip by clip."""

    vae_version: str
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-animate-pose"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*ENCODE_READS, "inputs.overlap_frames")

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        clips = clip_pixels(ctx.file("pose_video"), p, p["video.width"], p["video.height"])
        latents = [encode(self, ctx, to_signed(clip)) for clip in clips]  # each (1, z, 20, h, w)
        return {"latents": torch.cat(latents).contiguous()}


@attrs.frozen
class EncodeAnimateFace:
    """"tokens" (n, 21, 5, D): each clip's face tokens; "uncond" (1, 21, 5, D): black crops'."""

    dit_files: int  # files of the DiT ("dit.0" …)
    dit_dtype: str = "auto"  # [models.dit].dtype
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The denoise step's storage of the block projections and the memory plan's block tiers, so
    #: the DiT is loaded as lean as the denoise step's (``AnimatePipeline`` sets them). Not keyed:
    #: the face tokens come from the encoders outside the blocks, which neither touches.
    storage: str = attrs.field(default="compute", metadata=NOT_KEYED)
    tiers: tuple[str, ...] = attrs.field(default=(), metadata=NOT_KEYED)
    kind: str = "encode-animate-face"
    version: int = 1
    output: str = "tensors"
    #: the attention kernel only picks the pooled DiT the denoise step shares (every step's key
    #: holds it anyway)
    reads: tuple[str, ...] = (*CLIP_READS, "runtime.attention", *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.models.animate import unconditional_face

        p = ctx.params
        device, dtype = component_runtime(p, self.dit_dtype)
        dit = model_pool.dit([ctx.weight(f"dit.{i}") for i in range(self.dit_files)], dtype, device,
                             p["runtime.attention"], self.residency, storage=self.storage,
                             tiers=self.tiers)  # animation: the denoise step's DiT
        size = dit.animate_config.motion.size
        clips = clip_pixels(ctx.file("face_video"), p, size, size)  # (n, 77, S, S, 3)
        tokens = []
        with torch.no_grad():
            for clip in clips:
                face = to_signed(clip)[None].to(device=device, dtype=dtype)  # (1, 3, 77, S, S)
                tokens.append(dit.prepare_face(face).tokens.float().cpu())
            uncond = dit.prepare_face(unconditional_face(face)).tokens.float().cpu()
        return {"tokens": torch.cat(tokens).contiguous(), "uncond": uncond.contiguous()}


@attrs.frozen
class PrepareAnimateBackground:
    """"frames" (n, 77, H, W, 3) uint8: each clip's background frames."""

    kind: str = "prepare-animate-background"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("video.width", "video.height", *CLIP_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        clips = clip_pixels(ctx.file("background_video"), p, p["video.width"], p["video.height"])
        return {"frames": torch.from_numpy(clips).contiguous()}


@attrs.frozen
class PrepareAnimateMask:
    """"keep" (n, 77, h, w): 1 where the clip keeps the background, 0 on the person to replace."""

    latent_stride: int  # pixels per latent
    kind: str = "prepare-animate-mask"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("video.width", "video.height", *CLIP_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        clips = torch.from_numpy(clip_pixels(ctx.file("mask"), p, p["video.width"], p["video.height"]))
        size = (p["video.height"] // self.latent_stride, p["video.width"] // self.latent_stride)
        return {"keep": keep_mask(clips, size).contiguous()}


def keep_mask(frames: Any, size: tuple[int, int]) -> Any:
    """(n, T, h, w): 1 where the background is kept, 0 on the person, of mask frames (n, T, H, W, 3)
    uint8 (white = the person; the first channel thresholded at half, as officially), downsampled
    to the latent grid ``size`` by nearest neighbour."""
    import torch.nn.functional as F

    person = (frames[..., 0].float() / 255 > 0.5).float()  # (n, T, H, W)
    return F.interpolate(1 - person, size=size, mode="nearest")


# ----------------------------------------------------------------------------- the kinds' nodes

REFERENCE, POSE, FACE = ("encode-conditioning:animate-reference", "encode-conditioning:animate-pose",
                         "encode-conditioning:animate-face")
BACKGROUND, MASK = "prepare-conditioning:animate-background", "prepare-conditioning:animate-mask"


def _weight(job: Any, component: str) -> dict[str, Any]:
    if component not in job.weights:
        raise ValueError(f"family {job.family.name!r} declares an Animate conditioner but has no {component} component")
    return {component: next(iter(job.weights[component].values()))}


def _reference_node(job: Any, declared: Any) -> StepSpec:
    step = EncodeAnimateReference(job.vae_version, **job.placed("vae"), clip_dtype=job.dtype("image_encoder"),
                                  clip_device=job.device("image_encoder"))
    return StepSpec(REFERENCE, step, files={"reference_image": job.file("reference_image")},
                    weights=job.vae_weight() | _weight(job, "image_encoder"))


def _pose_node(job: Any, declared: Any) -> StepSpec:
    return StepSpec(POSE, EncodeAnimatePose(job.vae_version, **job.placed("vae")),
                    files={"pose_video": job.file("pose_video")}, weights=job.vae_weight())


def _face_node(job: Any, declared: Any) -> StepSpec:
    (role,) = job.dits()
    step = EncodeAnimateFace(len(job.weights[role]), job.dtype(role), job.residency)
    return StepSpec(FACE, step, files={"face_video": job.file("face_video")}, weights=dict(job.weights[role]))


def _background_node(job: Any, declared: Any) -> StepSpec | None:
    if not job.given("background_video"):
        return None  # animation mode (validation refuses replacement without it)
    return StepSpec(BACKGROUND, PrepareAnimateBackground(), files={"background_video": job.file("background_video")})


def _mask_node(job: Any, declared: Any) -> StepSpec | None:
    if not job.given("mask"):
        return None
    return StepSpec(MASK, PrepareAnimateMask(job.family.spatial_factor // 2), files={"mask": job.file("mask")})


# ----------------------------------------------------------------------------- the hand-offs of one clip


def with_animate(call: ModelCall, **fields: Any) -> ModelCall:
    """The model call with fields of the DiT's Animate extras set (each once)."""
    from wanflow.models.animate_guidance import GuidedAnimateExtras

    current = call.extras if isinstance(call.extras, GuidedAnimateExtras) else GuidedAnimateExtras()
    for name in fields:
        if getattr(current, name) is not None:
            raise ValueError(f"two conditioners set the Animate extra {name!r}; a family declares one")
    return attrs.evolve(call, extras=attrs.evolve(current, **fields))


def _reference_hand_off(tensors: Any, call: ModelCall) -> ModelCall:
    """The CLIP tokens; the reference latent joins the condition channels in the clip loop."""
    return call.with_tokens(tensor(tensors, "clip", "animate_reference"))  # (1, 257, 1280)


def _pose_hand_off(tensors: Any, call: ModelCall) -> ModelCall:
    return with_animate(call, pose=tensor(tensors, "latents", "animate_pose"))  # one clip: (1, z, 20, h, w)


def _face_hand_off(tensors: Any, call: ModelCall) -> ModelCall:
    from wanflow.models.animate import PreparedFace

    if "crops" in tensors:  # a training sample whose face encoders train: the DiT encodes the crops itself
        return with_animate(call, face=tensor(tensors, "crops", "animate_face"))  # (1, 3, T, S, S)
    return with_animate(call, face=PreparedFace(tensor(tensors, "tokens", "animate_face")),  # (1, 21, 5, D)
                        uncond_face=PreparedFace(tensor(tensors, "uncond", "animate_face")))


def _loop_only(role: str) -> Any:
    def hand_off(tensors: Any, call: ModelCall) -> ModelCall:
        raise ValueError(f"{role}: read by the Animate clip loop, which encodes it into each clip's condition "
                         "channels; it has no hand-off of its own")
    return hand_off


ANIMATE_REFERENCE = Implementation(_reference_node, _reference_hand_off)
ANIMATE_POSE = Implementation(_pose_node, _pose_hand_off)
ANIMATE_FACE = Implementation(_face_node, _face_hand_off)
ANIMATE_BACKGROUND = Implementation(_background_node, _loop_only("animate_background"))
ANIMATE_MASK = Implementation(_mask_node, _loop_only("animate_mask"))
#: The roles the clip loop hands to the DiT through their kinds, sliced to one clip.
HANDED = ("animate_reference", "animate_pose", "animate_face")
