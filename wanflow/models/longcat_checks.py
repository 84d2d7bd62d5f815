"""The LongCat-Video DiT's checks on what a forward is handed: refused before any work, with the fix.

Latents, per-frame timesteps, text and its lengths, the number of conditioning frames, and a
conditioning cache that must fit the frames it precedes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from wanflow.errors import ModelInputError
from wanflow.models.longcat_config import LongCatConfig

if TYPE_CHECKING:
    from wanflow.models.longcat import ConditionCache


def check_latents(cfg: LongCatConfig, x: Tensor, name: str = "x") -> None:
    """(B, in_channels, T, H, W) with H and W whole patches."""
    if x.ndim != 5 or x.shape[1] != cfg.in_channels:
        raise ModelInputError(
            f"{name}: expected latents (B, {cfg.in_channels}, T, H, W), got shape {tuple(x.shape)}."
        )
    _, ph, pw = cfg.patch_size
    if x.shape[3] % ph or x.shape[4] % pw:
        raise ModelInputError(
            f"{name}: latent height and width {tuple(x.shape[3:])} must be multiples of the patch "
            f"({ph}, {pw}); pick a video size that is a multiple of {8 * ph} pixels."
        )


def check_forward(
    cfg: LongCatConfig, x: Tensor, t: Tensor, context: Tensor, text_lens: Tensor | None,
    cond_frames: int, cache: ConditionCache | None,
) -> Tensor:
    """Refuse malformed inputs before any work; returns the timesteps per frame (B, T), a new tensor."""
    check_latents(cfg, x)
    batch, frames = x.shape[0], x.shape[2]
    _check_text(cfg, context, text_lens, batch)
    _check_cond_frames(cond_frames, frames, cache)
    if cache is not None:
        _check_cache(cfg, cache, x)
    return _per_frame(t, batch, frames)


def _per_frame(t: Tensor, batch: int, frames: int) -> Tensor:
    """(B,) or (B, T) timesteps as (B, T)."""
    if t.ndim == 1 and t.shape[0] == batch:
        return t[:, None].expand(batch, frames).clone()
    if t.shape == (batch, frames):
        return t.clone()
    raise ModelInputError(
        f"t: expected timesteps ({batch},) or one per latent frame ({batch}, {frames}), got shape "
        f"{tuple(t.shape)}."
    )


def _check_text(cfg: LongCatConfig, context: Tensor, text_lens: Tensor | None, batch: int) -> None:
    """Context (B, S ≤ text_len, caption_channels) and lengths (B,) in [1, S]."""
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != cfg.caption_channels:
        raise ModelInputError(
            f"context: expected umT5 features ({batch}, S, {cfg.caption_channels}), got shape "
            f"{tuple(context.shape)}."
        )
    if context.shape[1] > cfg.text_len:
        raise ModelInputError(
            f"context: {context.shape[1]} text tokens; the model takes at most {cfg.text_len}."
        )
    if text_lens is None:
        return
    bad = text_lens.shape != (batch,) or text_lens.is_floating_point()
    if bad or bool((text_lens < 1).any()) or bool((text_lens > context.shape[1]).any()):
        raise ModelInputError(
            f"text_lens: expected ({batch},) integer token counts in [1, {context.shape[1]}], got "
            f"{text_lens.tolist()!r}."
        )


def _check_cond_frames(cond_frames: int, frames: int, cache: ConditionCache | None) -> None:
    """0 ≤ cond_frames < T without a cache (at least one frame to denoise); 0 with one."""
    if isinstance(cond_frames, bool) or not isinstance(cond_frames, int):
        raise ModelInputError(f"cond_frames: expected an integer, got {cond_frames!r}.")
    if cache is not None and cond_frames:
        raise ModelInputError(
            f"cond_frames = {cond_frames} with a cache: the cache already holds the conditioning "
            "frames; pass only the frames to denoise, with cond_frames = 0."
        )
    if not 0 <= cond_frames < frames:
        raise ModelInputError(
            f"cond_frames = {cond_frames}: must be in [0, {frames - 1}] for {frames} latent frames "
            "(at least one frame must be left to denoise)."
        )


def _check_cache(cfg: LongCatConfig, cache: ConditionCache, x: Tensor) -> None:
    """A cache from this model's depth, for this spatial size, of one sample or x's batch."""
    grid_hw = (x.shape[3] // cfg.patch_size[1], x.shape[4] // cfg.patch_size[2])
    if len(cache.kv) != cfg.depth:
        raise ModelInputError(f"cache: holds {len(cache.kv)} blocks; this model has {cfg.depth}.")
    if tuple(cache.grid_hw) != grid_hw:
        raise ModelInputError(
            f"cache: made for a {cache.grid_hw} token grid, but x has {grid_hw}; cache the "
            "conditioning frames at the size of the video being made."
        )
    if cache.batch not in (1, x.shape[0]):
        raise ModelInputError(f"cache: made for {cache.batch} samples; x has {x.shape[0]} (1 serves any batch).")
    if cache.kv[0][0].device != x.device:
        raise ModelInputError(f"cache: on {cache.kv[0][0].device}, x on {x.device}; make the cache where x is.")
