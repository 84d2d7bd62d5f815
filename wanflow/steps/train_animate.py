"""Wan2.2-Animate's training samples, as DiffSynth's training forward builds them (animation and
replacement modes).

One clip per sample, no clip loop: a row's ``video`` of F frames is x0 (every latent frame noised
and learnt, none held clean); its ``input_image`` (the clip's first frame unless the row names an
image) gives the I2V condition channels (a frame mask and the VAE latent of [image, zeros…] over
the F frames) and the CLIP tokens, through the base encodes; ``animate_pose_video`` and
``animate_face_video`` are cut to their first F − 4 frames (DiffSynth's ``AnimateVideoSplit``):
the pose frames' VAE latents are added to latent frames 1.. of x, the face crops (at the motion
encoder's size) become face tokens through the DiT's own motion and face encoders, which
DiffSynth's LoRA on ``dit`` does not train, so a LoRA's are computed once per sample and cached.
Full fine-tuning trains the Animate parts alone (pose embedding, motion and face encoders, face
blocks: DiffSynth's ``--trainable_models animate_adapter``), so its sample keeps the face crops
and the DiT encodes them at every step. They reach the DiT through the Animate kinds' own
hand-offs (``cond_animate``). Samples of one size batch together, each with its own pose and face.

Replacement mode: a row with ``animate_inpaint_video`` and ``animate_mask_video`` (cut to F − 4
frames as the pose) conditions latent frames 1.. on the background instead of the image's zeros:
their I2V channels are the mask's "keep" channels (0 on the person, built as a replacement
generation builds them) and the background's VAE latent, DiffSynth's ``AnimateInpaint``
(``train/background:<i>``); latent frame 0 keeps the image's own (a mask of ones and the image's
latent: the causal VAE encodes the first frame alone). The DiT trains without the relighting
LoRA a replacement generation applies: DiffSynth's training loads and applies none, so the
LoRA learnt is a LoRA of the DiT alone, and a replacement generation applies it after the
relighting LoRA as it would any other.

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
from wanflow.steps.runtime import dit_storage
from wanflow.steps.text import RUNTIME_READS

log = structlog.get_logger(__name__)

#: The frames a clip has beyond its pose and face videos (DiffSynth's ``len(input_video) - 4``):
#: latent frame 0 is the reference image's, the pose and face cover the frames after it.
SPLIT = 4
#: The dataset's columns of an Animate sample (DiffSynth's names), by the role of their node.
POSE, FACE = "animate_pose_video", "animate_face_video"
#: The family inputs a training sample takes, and those it must have (the image defaults to the
#: clip's first frame, as DiffSynth's ``input_image``).
TRAIN_ACCEPTED = frozenset({"image", "pose_video", "face_video", "background_video", "mask"})
TRAIN_REQUIRED = frozenset({"image", "pose_video", "face_video"})
FRAME_INPUTS = frozenset({"input_image"})
BACKGROUND, MASK = "animate_inpaint_video", "animate_mask_video"
#: The role of a replacement sample's background encode (its I2V channels of frames 1..).
BACKGROUND_ROLE = "animate_background"
#: Columns an Animate dataset may not use, with why (the dataset names each row using one).
REFUSED_COLUMNS = {
    "pose_video": "Animate's pose video column is animate_pose_video (DiffSynth's name); rename the column",
    "face_video": "Animate's face video column is animate_face_video (DiffSynth's name); rename the column",
}


def animate_mask_problems(dataset: Any, family: Any, label: str) -> list[str]:
    """Replacement rows whose mask video is not black and white over the frames training reads,
    refused as a generation refuses such a mask (``animate_checks``): the mask is thresholded."""
    from pathlib import Path

    from wanflow.errors import display_path
    from wanflow.steps.animate_checks import MASK_GREY_SHARE, grey_share

    if not is_animate(family):
        return []
    found = []
    for s in dataset.samples:
        ref = s.input(MASK)
        if ref is None:
            continue
        path = Path(ref.path)
        st = path.stat()
        grey, share = grey_share(path, s.target.frames - SPLIT, st.st_size, st.st_mtime_ns)
        if share > MASK_GREY_SHARE:
            found.append(f"{label}: {display_path(dataset.source)} row {s.row}: {MASK} = {display_path(path)!r}: "
                         f"not a black-and-white mask: {share:.0%} of its pixels are grey (e.g. {grey}); use the "
                         "preprocessing's mask video (white on the person to replace, black elsewhere)")
    return found


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
        return {"latents": _split_latent(self, ctx, "pose_video").contiguous()}


@attrs.frozen
class EncodeAnimateFaceSample:
    """"tokens" (1, (F − 1)/4 + 1, 5, D): the face tokens of the face video's first F − 4 frames
    (crops at the motion encoder's size), by the DiT's frozen motion and face encoders; "uncond"
    the tokens of black crops, which the Animate hand-off carries (training never reads them).
    With ``crops`` (full fine-tuning, which trains those encoders): "crops" (1, 3, F − 4, S, S) in
    [-1, 1] instead, which the DiT encodes at every step."""

    frames: int
    dit_files: int
    dit_dtype: str = "auto"
    crops: bool = False
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    #: The train step's storage of the frozen blocks' projections ("fp8" with [memory].fp8), so
    #: the DiT this encode loads is as lean as the one that trains (never a compute-dtype copy of
    #: an fp8 base). Not keyed: the face tokens come from the encoders outside the blocks.
    storage: str = attrs.field(default="compute", metadata=NOT_KEYED)
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
                             p["runtime.attention"], self.residency, storage=self.storage)
        size = dit.animate_config.motion.size
        crops = load_video(ctx.file("face_video"), self.frames - SPLIT, size, size)  # (T, S, S, 3)
        if self.crops:
            return {"crops": to_signed(crops)[None].contiguous()}  # (1, 3, T, S, S)
        face = to_signed(crops)[None].to(device=device, dtype=dtype)  # (1, 3, T, S, S)
        with torch.no_grad():
            tokens = dit.prepare_face(face).tokens.float().cpu()
            uncond = dit.prepare_face(unconditional_face(face)).tokens.float().cpu()
        return {"tokens": tokens.contiguous(), "uncond": uncond.contiguous()}


@attrs.frozen
class EncodeAnimateBackgroundSample:
    """"y" (1, 4 + z, (F − 1)/4, h, w): a replacement sample's I2V channels of latent frames 1..:
    the keep mask of the mask video's first F − 4 frames on the latent grid (1 on the background,
    0 on the person) in the DiT's 4 mask channels, then the VAE latent of the background video's
    first F − 4 frames, both at the sample's size (resized and cropped as the clip is)."""

    frames: int  # the clip's F
    height: int
    width: int
    latent_stride: int  # pixels per latent
    vae_version: str
    dtype: str = "auto"
    device: str = "auto"
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-animate-background-sample"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = (*VAE_READS, *RUNTIME_READS)

    def run(self, ctx: Any) -> dict[str, Any]:
        return _guarded(self._encode, ctx, self.kind)

    def _encode(self, ctx: Any) -> dict[str, Any]:
        import torch

        from wanflow.output import load_video
        from wanflow.steps.cond_animate import keep_mask
        from wanflow.steps.denoise_animate import mask_channels

        masks = torch.from_numpy(load_video(ctx.file("mask"), self.frames - SPLIT, self.width, self.height))[None]
        keep = keep_mask(masks, (self.height // self.latent_stride, self.width // self.latent_stride))
        latent = _split_latent(self, ctx, "background_video")
        return {"y": torch.cat([mask_channels(keep), latent], dim=1).contiguous()}


def _split_latent(step: Any, ctx: Any, role: str) -> Any:
    """(1, z, (F − 4 − 1)/4 + 1, h, w) fp32 on the CPU: the VAE latent of the ``role`` video's
    first F − 4 frames at the step's size (DiffSynth's AnimateVideoSplit), on the step's VAE."""
    import torch

    from wanflow.steps.media import video_tensor

    device, dtype = component_runtime(ctx.params, step.dtype, step.device)
    vae = model_pool.vae(ctx.weight("vae"), step.vae_version, dtype, device, step.residency)
    pixels = video_tensor(ctx.file(role), step.frames - SPLIT, step.width, step.height)  # (3, F − 4, H, W)
    with torch.no_grad():
        return vae.encode(pixels[None].to(device=device, dtype=dtype), tile=tile_spec(ctx.params)).float().cpu()


def with_background(out: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """A replacement sample's tensors: the I2V channels of latent frames 1.. are its background's
    (``EncodeAnimateBackgroundSample``), frame 0 stays the image's; other samples as they are."""
    import torch

    background = found.pop(BACKGROUND_ROLE, None)
    if background is None:
        return out
    return {**out, "y": torch.cat([out["y"][:, :, :1], background["y"].to(out["y"].dtype)], dim=2)}


def animate_sample_nodes(job: Any, sample: Any, vae_version: str) -> list[tuple[str, StepSpec]]:
    """(conditioner role, node) of a sample's pose and face encodes, named ``train/pose:<i>`` and
    ``train/face:<i>``, and of a replacement sample's background, ``train/background:<i>``; the
    image's y and CLIP tokens are the base encodes'."""
    i, target = sample.index, sample.target
    size = {"frames": target.frames, "height": target.height, "width": target.width}
    pose = EncodeAnimatePoseSample(**size, vae_version=vae_version, **job.placed("vae"))
    (role,) = job.dits()
    full = job.values["train.method"] == "full"  # the face encoders train: crops, encoded at every step
    storage = "compute" if full else dit_storage(job.values)  # a LoRA's frozen base: fp8 with [memory].fp8
    face = EncodeAnimateFaceSample(target.frames, len(job.weights[role]), job.dtype(role), full, job.residency,
                                   storage)
    nodes = [
        ("animate_pose", StepSpec(f"train/pose:{i}", pose, files={"pose_video": sample.input(POSE).path},
                                  weights=job.vae_weight())),
        ("animate_face", StepSpec(f"train/face:{i}", face, files={"face_video": sample.input(FACE).path},
                                  weights=dict(job.weights[role]))),
    ]
    if sample.input(BACKGROUND) is None:
        return nodes  # animation mode (the dataset refuses a background without its mask)
    step = EncodeAnimateBackgroundSample(**size, latent_stride=job.family.spatial_factor // 2,
                                         vae_version=vae_version, **job.placed("vae"))
    files = {"background_video": sample.input(BACKGROUND).path, "mask": sample.input(MASK).path}
    return [*nodes, (BACKGROUND_ROLE, StepSpec(f"train/background:{i}", step, files=files, weights=job.vae_weight()))]
