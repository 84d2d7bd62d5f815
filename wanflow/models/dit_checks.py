"""The Wan DiT's checks on what a forward is handed: refused before any work, with the fix.

Shapes of latents, timesteps, text and CLIP context, skipped blocks, and the extras of the
derivative parts (``DitExtras``): a field the weights cannot use is refused, and so is a
missing field they need.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

from wanflow.errors import ModelInputError
from wanflow.models import fun_parts, vace
from wanflow.models.dit_config import CLIP_DIM, CLIP_TOKENS, REF_CONV_IN_DIM, DitConfig
from wanflow.models.dit_extras import DitExtras

if TYPE_CHECKING:
    from wanflow.models.dit import PreparedContext


def check_extras(cfg: DitConfig, extras: DitExtras, x_shape: torch.Size) -> DitExtras:
    """Refuse an extra the weights cannot use, or a missing one they need; returns the extras
    expanded to x's batch."""
    given = {k: getattr(extras, k) is not None for k in EXTRA_PARTS}
    for field, (present, part) in EXTRA_PARTS.items():
        if given[field] and not present(cfg):
            raise ModelInputError(f"{field}: this DiT has no {part}; its weights cannot use it.")
    if cfg.vace_layers and not given["vace_context"]:
        raise ModelInputError("vace_context: a VACE DiT needs its context (B, 96, F, H, W) in every call.")
    if given["vace_context"]:
        vace.check_context(extras.vace_context, x_shape, cfg.vace_in_dim)
    elif not (isinstance(extras.vace_scale, (int, float)) and extras.vace_scale == 1.0):
        raise ModelInputError(f"vace_scale: {extras.vace_scale!r} given without a vace_context.")
    if given["reference"]:
        fun_parts.check_reference(extras.reference, x_shape, REF_CONV_IN_DIM)
    if given["camera"]:
        fun_parts.check_camera(extras.camera, x_shape, cfg.camera_in_dim)
    if given["modulation"] and (extras.modulation.ndim != 3 or extras.modulation.shape[0] not in (
            1, x_shape[0]) or tuple(extras.modulation.shape[1:]) != (6, cfg.dim)):
        raise ModelInputError(
            f"modulation: shape {tuple(extras.modulation.shape)}; expected ({x_shape[0]}, 6, {cfg.dim}) "
            "(a motion controller of this DiT's width)."
        )
    return batched(extras, x_shape[0])


def batched(extras: DitExtras, rows: int) -> DitExtras:
    """Batch-1 tensors of the extras expanded to ``rows`` (a view); others kept as they are."""

    def grown(t: Tensor | None) -> Tensor | None:
        return t if t is None or t.shape[0] == rows else t.expand(rows, *t.shape[1:])

    return attrs.evolve(extras, vace_context=grown(extras.vace_context), reference=grown(extras.reference),
                        camera=grown(extras.camera), modulation=grown(extras.modulation))


#: DitExtras field -> (whether a config has the part that reads it, the part's name).
EXTRA_PARTS = {
    "vace_context": (lambda c: bool(c.vace_layers), "VACE blocks (vace_blocks)"),
    "reference": (lambda c: c.ref_conv, "reference embedding (ref_conv)"),
    "camera": (lambda c: bool(c.camera_in_dim), "camera adapter (control_adapter)"),
    "modulation": (lambda c: True, "modulation"),
}


def check_latent(x: Tensor, cfg: DitConfig) -> None:
    """Channels must add up to in_dim and sizes must divide into patches."""
    if x.shape[1] != cfg.in_dim:
        need = (
            f"{cfg.out_dim} latent channels plus a {cfg.in_dim - cfg.out_dim}-channel y"
            if cfg.in_dim != cfg.out_dim else f"{cfg.in_dim} latent channels and no y"
        )
        raise ModelInputError(
            f"x: {x.shape[1]} channels (x and y together); this {cfg.model_type} DiT takes {need}."
        )
    if any(n % p for n, p in zip(x.shape[2:], cfg.patch_size)):
        raise ModelInputError(
            f"x: frames/height/width {tuple(x.shape[2:])} must be multiples of the patch size "
            f"{cfg.patch_size}; crop or pad the latents."
        )


def check_skip_blocks(skip_blocks: Collection[int], num_layers: int) -> None:
    """Blocks to skip must exist: a wrong index would otherwise skip nothing, silently."""
    outside = [i for i in skip_blocks
               if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_layers]
    if outside:
        raise ModelInputError(
            f"skip_blocks: {outside} outside this DiT's blocks 0..{num_layers - 1} ({num_layers} layers)."
        )


def check_timesteps(t: Tensor, batch: int, tokens: int) -> None:
    """t is (B,) or per token (B, L)."""
    if tuple(t.shape) not in ((batch,), (batch, tokens)):
        raise ModelInputError(
            f"t: shape {tuple(t.shape)}; expected ({batch},) or per token ({batch}, {tokens})."
        )


def check_context(context: Tensor, batch: int, cfg: DitConfig) -> None:
    """Text context (B, <= text_len, text_dim)."""
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.text_dim:
        raise ModelInputError(
            f"context: shape {tuple(context.shape)}; expected ({batch}, <={cfg.text_len}, {cfg.text_dim})."
        )
    if context.shape[1] > cfg.text_len:
        raise ModelInputError(
            f"context: {context.shape[1]} tokens; at most {cfg.text_len} (truncate the prompt)."
        )


def check_prepared(context: PreparedContext, clip_fea: Tensor | None, batch: int) -> None:
    """A prepared context already holds the image tokens and fixes the batch size."""
    if clip_fea is not None:
        raise ModelInputError("clip_fea: pass it to prepare_context(), not with a prepared context.")
    if context.batch != batch:
        raise ModelInputError(f"context: prepared for batch {context.batch}, but x has batch {batch}.")


def shape_clip(clip_fea: Tensor | None, batch: int, cfg: DitConfig) -> Tensor | None:
    """CLIP tokens are required exactly when the DiT has img_emb; FLF2V pairs are joined."""
    if not cfg.clip:
        if clip_fea is not None:
            raise ModelInputError(f"clip_fea: this {cfg.model_type} DiT takes no CLIP image tokens.")
        return None
    want = (batch, cfg.image_len, CLIP_DIM)
    if clip_fea is None:
        raise ModelInputError(f"clip_fea: this {cfg.model_type} DiT needs CLIP tokens {want}.")
    if cfg.model_type == "flf2v" and tuple(clip_fea.shape) == (2 * batch, CLIP_TOKENS, CLIP_DIM):
        clip_fea = clip_fea.reshape(want)  # (B, 514, 1280): first image then last image
    if tuple(clip_fea.shape) != want:
        raise ModelInputError(f"clip_fea: shape {tuple(clip_fea.shape)}; expected {want}.")
    return clip_fea
