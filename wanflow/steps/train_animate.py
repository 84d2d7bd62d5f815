"""Wan2.2-Animate's training samples, as DiffSynth's training forward builds them (animation mode).

One clip per sample, no clip loop: a row's ``video`` of F frames is x0 (every latent frame noised
and learnt, none held clean); its ``input_image`` (the clip's first frame unless the row names an
image) gives the I2V condition channels (a frame mask and the VAE latent of [image, zeros…] over
the F frames) and the CLIP tokens, through the base encodes; ``animate_pose_video`` and
``animate_face_video`` are cut to their first F − 4 frames (DiffSynth's ``AnimateVideoSplit``):
the pose frames' VAE latents are added to latent frames 1.. of x, the face crops (at the motion
encoder's size) become face tokens through the DiT's own motion and face encoders, which neither
DiffSynth's LoRA nor its full fine-tuning of the DiT trains, so they are computed once per sample
and cached. They reach the DiT through the Animate kinds' own hand-offs (``cond_animate``).

Replacement mode (``animate_inpaint_video``, ``animate_mask_video``) is refused at validation:
inference applies the relighting LoRA to the DiT in that mode, and training on a base with that
LoRA applied is not built.

Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import attrs
import structlog

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime
from wanflow.steps.conditioning import VAE_READS, tile_spec
from wanflow.steps.text import RUNTIME_READS

log = structlog.get_logger(__name__)

#: The frames a clip has beyond its pose and face videos (DiffSynth's ``len(input_video) - 4``):
#: latent frame 0 is the reference image's, the pose and face cover the frames after it.
SPLIT = 4
#: The dataset's columns of an Animate sample (DiffSynth's names), by the role of their node.
POSE, FACE = "animate_pose_video", "animate_face_video"
REPLACEMENT_COLUMNS = ("animate_inpaint_video", "animate_mask_video")
#: The family inputs a training sample takes, and those it must have (the image defaults to the
#: clip's first frame, as DiffSynth's ``input_image``).
TRAIN_ACCEPTED = frozenset({"image", "pose_video", "face_video", "background_video", "mask"})
TRAIN_REQUIRED = frozenset({"image", "pose_video", "face_video"})
FRAME_INPUTS = frozenset({"input_image"})
_REPLACEMENT = ("replacement-mode training is not built: a replacement generation applies the relighting "
                "LoRA to the DiT, and training on a base with that LoRA applied is not built; train animation "
                "mode (rows without animate_inpaint_video and animate_mask_video)")
#: Columns an Animate dataset may not use, with why (the dataset names each row using one).
REFUSED_COLUMNS = {
    "animate_inpaint_video": _REPLACEMENT, "animate_mask_video": _REPLACEMENT,
    "pose_video": "Animate's pose video column is animate_pose_video (DiffSynth's name); rename the column",
    "face_video": "Animate's face video column is animate_face_video (DiffSynth's name); rename the column",
}


def is_animate(family: Any) -> bool:
    from wanflow.families.animate import PIPELINE

    return family.pipeline == PIPELINE


def _guarded(run: Any, ctx: Any, what: str) -> dict[str, Any]:
    """``run(ctx)``, or ``{"unreadable": …}`` when the sample's file cannot be decoded: the train
    step leaves that sample out and says so."""
    import torch

    from wanflow.errors import ModelInputError

    try:
        return run(ctx)
    except (ModelInputError, OSError, RuntimeError, ValueError) as exc:
        log.warning("train.sample_unreadable", step=what, error=str(exc).splitlines()[0][:200],
                    note="the sample is left out of training")
        return {"unreadable": torch.ones(1)}


@attrs.frozen
class EncodeAnimatePoseSample:
    """"latents" (1, z, (F − 4 − 1)/4 + 1, h, w): the VAE latent of the pose video's first F − 4
    frames at the sample's size (resized and cropped as the clip is)."""

    frames: int  # the clip's F
    height: int
    width: int
    vae_version: str
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-animate-pose-sample"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        return _guarded(self._encode, ctx, self.kind)

    def _encode(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.steps.media import video_tensor

        device, dtype = component_runtime(ctx.params, self.dtype, self.device)
        vae = model_pool.vae(ctx.weight("vae"), self.vae_version, dtype, device, self.residency)
        pixels = video_tensor(ctx.file("pose_video"), self.frames - SPLIT, self.width, self.height)
        with torch.no_grad():
            latent = vae.encode(pixels[None].to(device=device, dtype=dtype), tile=tile_spec(ctx.params))
        return {"latents": latent.float().cpu().contiguous()}


@attrs.frozen
class EncodeAnimateFaceSample:
    """"tokens" (1, (F − 1)/4 + 1, 5, D): the face tokens of the face video's first F − 4 frames
    (crops at the motion encoder's size), by the DiT's frozen motion and face encoders; "uncond"
    the tokens of black crops, which the Animate hand-off carries (training never reads them)."""

    frames: int
    dit_files: int
    dit_dtype: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-animate-face-sample"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ("runtime.attention", *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        return _guarded(self._encode, ctx, self.kind)

    def _encode(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.models.animate import unconditional_face
        from wanflow.output import load_video
        from wanflow.steps.cond_animate import to_signed

        p = ctx.params
        device, dtype = component_runtime(p, self.dit_dtype)
        dit = model_pool.dit([ctx.weight(f"dit.{i}") for i in range(self.dit_files)], dtype, device,
                             p["runtime.attention"], self.residency)
        size = dit.animate_config.motion.size
        crops = load_video(ctx.file("face_video"), self.frames - SPLIT, size, size)  # (T, S, S, 3)
        face = to_signed(crops)[None].to(device=device, dtype=dtype)  # (1, 3, T, S, S)
        with torch.no_grad():
            tokens = dit.prepare_face(face).tokens.float().cpu()
            uncond = dit.prepare_face(unconditional_face(face)).tokens.float().cpu()
        return {"tokens": tokens.contiguous(), "uncond": uncond.contiguous()}


def animate_sample_nodes(job: Any, sample: Any, vae_version: str) -> list[tuple[str, StepSpec]]:
    """(conditioner role, node) of a sample's pose and face encodes, named ``train/pose:<i>`` and
    ``train/face:<i>``; the image's y and CLIP tokens are the base encodes'."""
    i, target = sample.index, sample.target
    size = {"frames": target.frames, "height": target.height, "width": target.width}
    pose = EncodeAnimatePoseSample(**size, vae_version=vae_version, **job.placed("vae"))
    (role,) = job.dits()
    face = EncodeAnimateFaceSample(target.frames, len(job.weights[role]), job.dtype(role), job.residency)
    return [
        ("animate_pose", StepSpec(f"train/pose:{i}", pose, files={"pose_video": sample.input(POSE).path},
                                  weights=job.vae_weight())),
        ("animate_face", StepSpec(f"train/face:{i}", face, files={"face_video": sample.input(FACE).path},
                                  weights=dict(job.weights[role]))),
    ]
