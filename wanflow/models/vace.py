"""VACE: a parallel stack of DiT blocks that turns a 96-channel context into additive hints.

The VACE releases are a T2V DiT plus ``vace_patch_embedding`` (Conv3d 96 -> D) and
``vace_blocks.{i}``: each a complete DiT block followed by ``after_proj`` (block 0 also has
``before_proj``). The branch starts from the patch-embedded context c plus the main branch's
patch-embedded tokens x (before any main block): ``c = before_proj(c) + x``; block i carries c on
and emits ``hint_i = after_proj(c)``, which the main loop adds, times the VACE scale, after main
block ``vace_layers[i]``. The VACE blocks share the main blocks' time modulation, text context
and RoPE.

Hints are computed on first use, block by block (:class:`Hints`): a step cache that skips the
main block stack then skips the VACE blocks too, and the hint of block i never waits for the
blocks after it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from wanflow.errors import ModelInputError
from wanflow.models.precision import Linear

#: Runs one DiT block: (block, tokens (B, L, D), e0, context or its keys/values, rope) -> tokens.
BlockRunner = Callable[[nn.Module, Tensor, Tensor, Any, tuple], Tensor]


def vace_block(block_class: type[nn.Module], cfg: Any, first: bool) -> nn.Module:
    """A VACE block: the DiT block class with ``after_proj`` (and, first, ``before_proj``)."""
    block = block_class(cfg)
    if first:
        block.before_proj = Linear(cfg.dim, cfg.dim)
    block.after_proj = Linear(cfg.dim, cfg.dim)
    return block


class Hints:
    """The hints of one forward, each computed when the main loop first reaches its layer.

    An explicit per-forward object (built by ``WanDiT.embed_inputs``, dropped with it): it holds
    the branch's running state c between the block-stack calls a step cache makes.
    """

    def __init__(self, blocks: nn.ModuleList, layers: Sequence[int], scales: Sequence[float],
                 c: Tensor, x: Tensor, e0: Tensor, contexts: Sequence[Any], rope: tuple,
                 run: BlockRunner):
        self.blocks, self.scales, self.run = blocks, tuple(scales), run
        self.index = {layer: i for i, layer in enumerate(layers)}  # main block -> VACE block
        self.c, self.x, self.e0, self.contexts, self.rope = c, x, e0, tuple(contexts), rope
        self.hints: list[Tensor] = []

    def after_block(self, layer: int, tokens: Tensor) -> Tensor:
        """``tokens`` after main block ``layer``, with its hint added when it has one."""
        i = self.index.get(layer)
        if i is None:
            return tokens
        while len(self.hints) <= i:
            self._advance()
        return tokens + self.hints[i] * self.scales[i]

    def _advance(self) -> None:
        """Run the next VACE block on c, keeping c for the one after and its hint."""
        i = len(self.hints)
        block = self.blocks[i]
        c = block.before_proj(self.c) + self.x if i == 0 else self.c  # (B, L, D)
        self.c = self.run(block, c, self.e0, self.contexts[i], self.rope)
        self.hints.append(block.after_proj(self.c))


def context_tokens(embedding: nn.Module, context: Tensor, tokens: int) -> Tensor:
    """``vace_patch_embedding`` of the context, flattened and zero-padded at the end to the
    main branch's token count (the reference tokens of a Fun model come first there):
    (B, C, F, H, W) -> (B, tokens, D)."""
    c = embedding(context).flatten(2).transpose(1, 2)  # (B, f*h*w, D)
    return nn.functional.pad(c, (0, 0, 0, tokens - c.shape[1]))


def scales(value: Any, count: int) -> tuple[float, ...]:
    """The VACE scale as one float per VACE block: one number for all, or one each."""
    if isinstance(value, Tensor):
        value = value.tolist()
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ModelInputError(
            f"vace_scale: {len(values)} values; this DiT has {count} VACE blocks (give one number "
            f"or {count})."
        )
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise ModelInputError(f"vace_scale: {bad[0]!r} is not a finite number.")
    return tuple(float(v) for v in values)


def check_context(context: Tensor, x_shape: torch.Size, in_dim: int) -> None:
    """The context covers x's frames and size with the branch's channels; batch 1 or x's."""
    batch, _, *size = x_shape
    if (context.ndim != 5 or context.shape[0] not in (1, batch) or context.shape[1] != in_dim
            or list(context.shape[2:]) != size):
        raise ModelInputError(
            f"vace_context: shape {tuple(context.shape)}; this VACE DiT takes ({batch}, {in_dim}, "
            f"{', '.join(map(str, size))}): the latents' frames (reference frames included) and size."
        )
