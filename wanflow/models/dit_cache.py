"""Run the Wan DiT's block stack, or skip it by adding a residual cached at an earlier step.

Step caches (TeaCache, MagCache, First-Block-Cache) rest on one observation: between nearby
denoising steps the change the block stack makes to the tokens, ``stack(x) - x``, changes little,
so a step can reuse the last computed change instead of running 30-40 blocks. This module is the
model side of that: it computes the signals a cache decides from (the time embedding ``e``, its
projection ``e0``, the first block's residual), asks the cache, and either runs the stack and
hands the cache the fresh residual or adds the cached one. The decision rules live in
``wanflow.sampling.step_cache``; this module knows them only through :class:`BlockCache`.

``cached_forward`` makes the same calls as ``WanDiT.forward`` in the same order, so a cache that
never skips reproduces the plain forward bit for bit (tested). A VACE branch belongs to the block
stack: its blocks run as the main blocks reach their hints, so a skipped stack skips them too
and the cached residual holds the hints of the step that computed it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from wanflow.models import dit as dit_module
from wanflow.models.dit import PreparedContext, WanDiT
from wanflow.models.dit_extras import DitExtras


class CacheSignals(NamedTuple):
    """What a cache may decide from; all of it is computed by the forward anyway."""

    e: Tensor  # (B, 1|L, D) fp32 time embedding (TeaCache's default signal)
    e0: Tensor  # (B, 1|L, 6, D) fp32 modulation projected for the blocks (TeaCache's ret-steps signal)
    first_residual: Tensor | None = None  # block 0's output minus its input (B, L, D); First-Block-Cache


class BlockCache(Protocol):
    """The decision side of a step cache, per guidance branch ("cond", "uncond", ...)."""

    #: Whether ``decide`` needs ``CacheSignals.first_residual`` (block 0 then always runs).
    uses_first_block: bool

    def step_for(self, branch: str, t: Tensor) -> int:
        """The schedule step this call of ``branch`` evaluates (checked against ``t``)."""
        ...

    def reused_output(self, step: int, branch: str, x: Tensor) -> Tensor | None:
        """Asked first, with the raw input latent: an output standing in for the whole call
        (EasyCache), or None to run the forward."""
        ...

    def decide(self, step: int, branch: str, signals: CacheSignals) -> bool:
        """True: run the block stack; False: add ``cached_residual(branch)`` instead."""
        ...

    def cached_residual(self, branch: str) -> Tensor:
        """The residual the skipped blocks stand for, (B, L, D) in the compute dtype."""
        ...

    def finish(self, step: int, branch: str, residual: Tensor | None, output: Tensor) -> None:
        """After the call: the fresh residual of the blocks that ran (None when skipped) and
        the DiT's output (B, C, F, H, W) fp32."""
        ...


StackInputs = dit_module.StackInputs


def embed_inputs(dit: WanDiT, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
                 clip_fea: Tensor | None = None, y: Tensor | None = None,
                 extras: DitExtras | None = None) -> StackInputs:
    """``WanDiT.embed_inputs``: the forward up to the blocks."""
    return dit.embed_inputs(x, t, context, clip_fea, y, extras)


def run_blocks(dit: WanDiT, inputs: StackInputs, tokens: Tensor, start: int, stop: int,
               skip_blocks: Collection[int] = ()) -> Tensor:
    """``WanDiT.run_blocks``: blocks [start, stop) leaving out ``skip_blocks``."""
    return dit.run_blocks(inputs, tokens, start, stop, skip_blocks)


def head_output(dit: WanDiT, inputs: StackInputs, tokens: Tensor) -> Tensor:
    """``WanDiT.head_output``: the head and unpatchify."""
    return dit.head_output(inputs, tokens)


def cached_forward(
    dit: WanDiT, x: Tensor, t: Tensor, context: Tensor | PreparedContext,
    clip_fea: Tensor | None = None, y: Tensor | None = None, skip_blocks: Collection[int] = (), *,
    cache: BlockCache, branch: str, extras: DitExtras | None = None,
) -> Tensor:
    """``dit(x, t, context, clip_fea, y, skip_blocks, extras)`` with the block stack run or
    skipped as ``cache`` decides.

    A First-Block-Cache always runs block 0 and caches the residual of blocks 1..N-1; the others
    cache the residual of the whole stack. ``branch`` names the guidance pass (each keeps its own
    state: the conditional, unconditional and skip-layer residuals differ).
    """
    step = cache.step_for(branch, t)
    reused = cache.reused_output(step, branch, x)
    if reused is not None:
        return reused
    inputs = embed_inputs(dit, x, t, context, clip_fea, y, extras)
    dit_module.checks.check_skip_blocks(skip_blocks, len(dit.blocks))
    tokens, first = inputs.tokens, 0
    first_residual = None
    if cache.uses_first_block:
        head_tokens = run_blocks(dit, inputs, tokens, 0, 1, skip_blocks)
        first_residual, tokens, first = head_tokens - inputs.tokens, head_tokens, 1
    signals = CacheSignals(inputs.e, inputs.e0, first_residual)
    if cache.decide(step, branch, signals):
        out = run_blocks(dit, inputs, tokens, first, len(dit.blocks), skip_blocks)
        residual = out - tokens
    else:
        out, residual = tokens + cache.cached_residual(branch), None
    velocity = head_output(dit, inputs, out)
    cache.finish(step, branch, residual, velocity)
    return velocity


def time_signals(dit: WanDiT, timesteps: Sequence[Tensor], extras: DitExtras | None = None) -> list[CacheSignals]:
    """The time-embedding signals of every step, computed before sampling as the forward computes
    them (``embed_time`` of the same ``t``, with the extras' modulation offset): what a TeaCache
    plan is solved from."""
    modulation = None if extras is None else extras.modulation
    with torch.no_grad():
        return [CacheSignals(e, dit_module.modulated(e0, modulation)) for e, e0 in map(dit.embed_time, timesteps)]
