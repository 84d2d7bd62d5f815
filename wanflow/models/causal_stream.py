"""A Wan DiT with one prompt, in the two calls a block-by-block sampler makes of it.

Krea Realtime's sampler (``wanflow.sampling.krea``) knows a model only through two calls: fill a
cache from clean context frames, and predict the velocity of a noisy block that attends to that
cache. :class:`CausalWan` answers both with :func:`wanflow.models.causal.causal_forward`, the
prompt's cross-attention keys/values computed once and reused by every call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wanflow.models.causal import FRAMES_PER_BLOCK, causal_forward
from wanflow.models.causal_kv import FrameKV
from wanflow.models.dit import PreparedContext, WanDiT


class CausalWan:
    """``dit`` bound to one prompt, run block-causally in blocks of ``frames_per_block``."""

    def __init__(self, dit: WanDiT, context: Tensor | PreparedContext, frames_per_block: int = FRAMES_PER_BLOCK):
        self.dit = dit
        self.frames_per_block = frames_per_block
        self.context = context if isinstance(context, PreparedContext) else dit.prepare_context(context)

    def context_cache(self, clean: Tensor) -> FrameKV:
        """Keys/values of clean latent frames (B, C, n, H, W) at positions 0..n-1 and t = 0,
        attending to each other block-causally (Krea's cache recomputation)."""
        t = torch.zeros(clean.shape[0], clean.shape[2], device=clean.device)
        return self._run(clean, t, None, 0).kv

    def velocity(self, x: Tensor, t: Tensor, cache: FrameKV | None, start_frame: int) -> Tensor:
        """Velocity (B, C, F, H, W) fp32 of noisy frames at positions start_frame.., per-frame t
        (B, F), every frame seeing all of ``cache``."""
        return self._run(x, t, cache, start_frame).velocity

    def _run(self, x: Tensor, t: Tensor, cache: FrameKV | None, start_frame: int):
        with torch.no_grad():
            return causal_forward(self.dit, x, t, self.context, frames_per_block=self.frames_per_block,
                                  start_frame=start_frame, cache=cache)
