"""Caption dropout: a share of the samples learn the empty prompt instead of their caption.

Classifier-free guidance steers a sample away from the model's *unconditional* prediction, which
a model only has if training showed it the empty prompt. Which samples are dropped is a draw
seeded by (seed, step, micro-batch, position), like every other draw of the loop: no state to
save, and a resumed run drops exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from wanflow.train.objective import generator

#: The stream tag of the dropout draws (the noise and timestep draws use other streams).
DROPOUT_STREAM = 7_001


def dropped(share: float, seed: int, stream: Sequence[int], positions: Sequence[int]) -> list[bool]:
    """Whether each position of the micro-batch learns the empty prompt."""
    if share <= 0:
        return [False] * len(positions)
    return [bool(torch.rand(1, generator=generator(seed, *stream, DROPOUT_STREAM, j)) < share) for j in positions]


def with_dropped(context: torch.Tensor, empty: torch.Tensor, drop: Sequence[bool]) -> torch.Tensor:
    """``context`` (B, L, D) with the rows in ``drop`` replaced by ``empty`` (1, L', D), both
    zero-padded to the longer length (the DiT pads every prompt with zeros to its text length)."""
    if not any(drop):
        return context
    length = max(context.shape[1], empty.shape[1])
    context = F.pad(context, (0, 0, 0, length - context.shape[1]))
    empty = F.pad(empty.to(context), (0, 0, 0, length - empty.shape[1]))
    keep = torch.tensor([not d for d in drop], device=context.device).view(-1, 1, 1)
    return torch.where(keep, context, empty.expand_as(context))
