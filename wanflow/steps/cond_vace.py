"""vace-context: the 96-channel context a VACE DiT reads beside the noisy latent.

``[inputs.vace]`` gives a video (what to keep or edit), a mask (1 = generate here) and reference
images (subjects or styles to carry over). The context is, along channels,
``[E(video·(1−m)) (16), E(video·m) (16), mask (64)]``, E the Wan2.1 VAE:

- the mask is cut at 0.5 before it splits the video (the VACE authors and diffusers; DiffSynth
  keeps soft values: ``binarize_mask = false``); its own 64 channels are the uncut pixel mask
  folded 8×8 into channels (channel dy·8 + dx) and resampled in time to the latent frames with
  nearest-exact, as all three do;
- no video: a zero (mid-grey) video and a mask of ones, so the model generates everything;
- each reference image, in the order given, is one more leading latent frame ``[E(ref), 0, 0]``;
  the denoiser adds as many frames in front of the noise and drops them after sampling.

The reference is fitted inside a white canvas of the video's size keeping its aspect (bilinear,
the VACE authors' and diffusers' rule), or stretched to it (``reference_resize = "stretch"``,
what DiffSynth's examples do before they call it). The scale of the hints rides along, so the
hand-off needs nothing but this step's tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.step import NOT_KEYED, StepSpec
from wanflow.errors import ModelInputError
from wanflow.media_size import IMAGE_SUFFIXES
from wanflow.steps.cond_call import Implementation, ModelCall, tensor
from wanflow.steps.conditioning import ENCODE_READS, encode
from wanflow.steps.media import image_tensor, video_tensor

NODE = "encode-conditioning:vace"
MASK_FOLD = 8  # pixels per latent along height and width: the mask's 8×8 become 64 channels
TIME_STRIDE = 4  # pixel frames per latent frame (the first one alone)


@attrs.frozen
class EncodeVaceContext:
    """{"context": (1, 2z + 64, n + T, h, w), "scale": (1,), "references": (1,)}."""

    vae_version: str  # "wan2.1" (every VACE release uses the Wan2.1 VAE)
    video: bool = False  # [inputs.vace].video given (file role "vace.video"); else zeros
    mask: bool = False  # [inputs.vace].mask given (file role "vace.mask"); else ones
    references: int = 0  # reference images, file roles "vace.reference.0", "vace.reference.1"…
    binarize_mask: bool = True  # cut at 0.5 before splitting the video (False: DiffSynth)
    reference_resize: str = "letterbox"  # "letterbox" (the VACE authors) | "stretch" (DiffSynth)
    scale: float = 1.0  # [inputs.vace].scale, the hints' weight
    dtype: str = "auto"  # [models.vae].dtype; "auto" follows [runtime].dtype
    device: str = "auto"  # [models.vae].device
    #: What the model pool may keep loaded (placement only: never part of the key).
    residency: Any = attrs.field(default=None, metadata=NOT_KEYED)
    kind: str = "encode-vace-context"
    version: int = 1
    output: str = "tensors"
    reads: tuple[str, ...] = ENCODE_READS

    def run(self, ctx: Any) -> dict[str, Any]:
        import torch

        p = ctx.params
        frames, w, h = p["video.frames"], p["video.width"], p["video.height"]
        video = (video_tensor(ctx.file("vace.video"), frames, w, h) if self.video
                 else torch.zeros(3, frames, h, w))
        mask = read_mask(ctx.file("vace.mask"), frames, w, h) if self.mask else torch.ones(1, frames, h, w)
        refs = [reference_tensor(ctx.file(f"vace.reference.{i}"), w, h, self.reference_resize)
                for i in range(self.references)]
        context = vace_context(lambda pixels: encode(self, ctx, pixels), video, mask, refs, self.binarize_mask)
        return {"context": context.contiguous(), "scale": torch.tensor([float(self.scale)]),
                "references": torch.tensor([len(refs)], dtype=torch.int64)}


def vace_context(encode_fn: Callable[[Any], Any], video: Any, mask: Any, references: Sequence[Any],
                 binarize: bool = True) -> Any:
    """(1, 2z + 64, n + T, h, w) from video (3, F, H, W) in [-1, 1], mask (1, F, H, W) in [0, 1]
    and reference frames (3, 1, H, W), given ``encode_fn(pixels (3, F, H, W)) -> (1, z, T, h, w)``."""
    import torch

    cut = (mask > 0.5).to(video.dtype) if binarize else mask
    inactive, reactive = encode_fn(video * (1 - cut)), encode_fn(video * cut)
    folded = mask_latents(mask)
    if folded.shape[2:] != inactive.shape[2:]:
        raise ModelInputError(f"VACE: the mask folds to {tuple(folded.shape[2:])} latents but the video "
                              f"encodes to {tuple(inactive.shape[2:])}; use a size divisible by 16")
    leading = []
    for ref in references:  # in the order given: the first reference is latent frame 0
        latent = encode_fn(ref)  # (1, z, 1, h, w)
        leading.append(torch.cat([latent, torch.zeros_like(latent),
                                  folded.new_zeros(1, folded.shape[1], 1, *folded.shape[3:])], dim=1))
    return torch.cat([*leading, torch.cat([inactive, reactive, folded], dim=1)], dim=2)


def mask_latents(mask: Any) -> Any:
    """(1, 64, T, h, w): each 8×8 pixel patch of mask (1, F, H, W) as 64 channels (dy·8 + dx),
    then F pixel frames resampled to T = (F + 3) // 4 latent frames, nearest-exact."""
    import torch.nn.functional as F

    frames = mask.shape[1]
    folded = F.pixel_unshuffle(mask.transpose(0, 1), MASK_FOLD).transpose(0, 1)  # (64, F, h, w)
    size = ((frames + TIME_STRIDE - 1) // TIME_STRIDE, *folded.shape[2:])
    return F.interpolate(folded[None], size=size, mode="nearest-exact")


def read_mask(path: Path, frames: int, width: int, height: int) -> Any:
    """(1, F, H, W) in [0, 1]: the mask's first (red) channel; an image is held for every frame."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        pixels = image_tensor(path, width, height).expand(3, frames, height, width)
    else:
        pixels = video_tensor(path, frames, width, height)
    return ((pixels[:1] + 1) / 2).clamp(0, 1)


def reference_tensor(path: Path, width: int, height: int, resize: str) -> Any:
    """A reference image as a one-frame clip (3, 1, H, W) in [-1, 1] of the video's size:
    letterboxed onto white keeping its aspect (bilinear), or stretched (bicubic)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from wanflow.output import to_model_image

    image = _rgb(path)
    if resize == "stretch":
        return torch.from_numpy(to_model_image(np.asarray(image.resize((width, height), Image.BICUBIC))))
    pixels = torch.from_numpy(to_model_image(np.asarray(image)))[:, 0]  # (3, h0, w0)
    h0, w0 = pixels.shape[1:]
    if (h0, w0) == (height, width):
        return pixels[:, None]
    scale = min(height / h0, width / w0)
    fit_h, fit_w = int(h0 * scale), int(w0 * scale)
    fitted = F.interpolate(pixels[None], size=(fit_h, fit_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.ones(3, height, width)  # white in [-1, 1]
    top, left = (height - fit_h) // 2, (width - fit_w) // 2
    canvas[:, top:top + fit_h, left:left + fit_w] = fitted
    return canvas[:, None]


def _rgb(path: Path) -> Any:
    """The image (EXIF rotation applied) as PIL RGB; an unreadable file is a clear input error."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from wanflow.output import describe_file

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ModelInputError(f"{path}: not a readable image ({exc}); it looks like {describe_file(path)}; "
                              "use a PNG, JPEG or WebP file for [inputs.vace].reference") from None


def reference_files(values: Mapping[str, Any]) -> list[Path]:
    """The reference images of ``[inputs.vace].reference`` in order: one path, or a list of them."""
    given = values.get("inputs.vace.reference")
    if given is None:
        return []
    return [Path(given)] if isinstance(given, (str, Path)) else [Path(p) for p in given]


def _setting(job: Any, name: str) -> Any:
    """``[inputs.vace].<name>``; without the table, the step's default (the recipe's own)."""
    value = job.values.get(f"inputs.vace.{name}")
    return attrs.fields_dict(EncodeVaceContext)[name].default if value is None else value


def _node(job: Any, declared: Any) -> StepSpec:
    files = {name: job.file(f"vace.{name}") for name in ("video", "mask") if job.given(f"vace.{name}")}
    if "mask" in files and "video" not in files:
        raise ModelInputError(f"{job.resolved.path}: [inputs.vace].mask is set without [inputs.vace].video: "
                              "a mask says which pixels of the VACE video to regenerate; set the video too, "
                              "or remove the mask to generate every pixel")
    refs = reference_files(job.values)
    step = EncodeVaceContext(job.vae_version, video="video" in files, mask="mask" in files,
                             references=len(refs), binarize_mask=bool(_setting(job, "binarize_mask")),
                             reference_resize=_setting(job, "reference_resize"),
                             scale=float(_setting(job, "scale")), **job.placed("vae"))
    files = {f"vace.{name}": path for name, path in files.items()}
    files |= {f"vace.reference.{i}": path for i, path in enumerate(refs)}
    return StepSpec(NODE, step, files=files, weights=job.vae_weight())


def _hand_off(tensors: Mapping[str, Any], call: ModelCall) -> ModelCall:
    context = tensor(tensors, "context", "vace")  # (1, 96, n + T, h, w)
    scale = float(tensor(tensors, "scale", "vace")[0])
    leading = int(tensor(tensors, "references", "vace")[0])
    call = call.with_extras(vace_context=context, vace_scale=scale)
    return call.with_dropped_frames(leading) if leading else call


VACE_CONTEXT = Implementation(_node, _hand_off)
