"""Run LongCat-Video's block stack, or skip it by adding a residual cached at an earlier step.

The model side of a step cache for LongCat's DiT, as ``models.dit_cache`` is for the Wan DiT:
the same decision rules (``wanflow.sampling.step_cache``) through the same ``BlockCache``
protocol. ``cached_forward`` makes the calls ``LongCatDiT.forward`` makes, in the same order, so a
cache that never skips reproduces the plain forward bit for bit (tested).

Every rule applies: First-Block-Cache (block 0 always runs; its residual decides whether blocks
1.. run), EasyCache (the DiT's output extrapolated from its input's change), and TeaCache and
MagCache, which are fitted to a model: nothing is published for LongCat, so they take a
calibration on it (``wanflow cache calibrate``), and recipe validation refuses them without one.
"""

from __future__ import annotations

from torch import Tensor

from wanflow.models.dit_cache import BlockCache, CacheSignals
from wanflow.models.longcat import ConditionCache, LongCatDiT


def cached_forward(
    dit: LongCatDiT, x: Tensor, t: Tensor, context: Tensor, text_lens: Tensor | None = None, *,
    cache: ConditionCache | None = None, sparse: object = None, step_cache: BlockCache, branch: str,
) -> Tensor:
    """``dit(x, t, context, text_lens, cache=cache, sparse=sparse)`` with the block stack run or
    skipped as ``step_cache`` decides for the guidance pass ``branch`` (each keeps its own state)."""
    step = step_cache.step_for(branch, t)
    reused = step_cache.reused_output(step, branch, x)
    if reused is not None:
        return reused
    inputs = dit.embed_inputs(x, t, context, text_lens, cache=cache, sparse=sparse)
    tokens, first, first_residual = inputs.tokens, 0, None
    if step_cache.uses_first_block:
        head = dit.run_blocks(inputs, tokens, 0, 1)
        first_residual, tokens, first = head - inputs.tokens, head, 1
    # LongCat's blocks take no shared modulation: its time embedding is TeaCache's signal ("e"),
    # and stands for "e0" too, which validation refuses for LongCat
    if step_cache.decide(step, branch, CacheSignals(inputs.t_emb, inputs.t_emb, first_residual)):
        out = dit.run_blocks(inputs, tokens, first, len(dit.blocks))
        residual = out - tokens
    else:
        out, residual = tokens + step_cache.cached_residual(branch), None
    output = dit.head_output(inputs, out)
    step_cache.finish(step, branch, residual, output)
    return output
