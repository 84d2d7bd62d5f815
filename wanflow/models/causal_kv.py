"""What a block-causal Wan DiT remembers between calls: self-attention keys/values per frame.

A block-causal model (Krea Realtime, Self-Forcing) generates a video a few latent frames at a
time; each new block attends to the keys and values of earlier frames instead of recomputing
them. :class:`FrameKV` holds those keys (already rotated at their frames' RoPE positions) and
values for every DiT block, frame by frame, so a cache can be cut to the frames a model keeps
(the first frame and the most recent ones) or extended by the frames just computed. It is an
explicit immutable value: every operation returns a new one.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from wanflow.errors import ModelInputError


@attrs.frozen(eq=False)
class FrameKV:
    """Self-attention keys and values of some latent frames, for every DiT block.

    ``keys[i]`` and ``values[i]`` belong to block i, each (B, n, S, H, d): n frames of S tokens;
    keys are rotated at the positions the frames had when they were computed.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    def __attrs_post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in (*self.keys, *self.values)}
        if not self.keys or len(self.keys) != len(self.values) or len(shapes) != 1:
            raise ModelInputError(
                f"FrameKV: need one (B, n, S, H, d) key and value tensor per block, all of one shape; "
                f"got {len(self.keys)} keys, {len(self.values)} values of shapes {sorted(shapes)}"
            )

    @property
    def frames(self) -> int:
        """How many latent frames the cache holds."""
        return int(self.keys[0].shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """(B, n, S, H, d) of every tensor."""
        return tuple(self.keys[0].shape)

    def block(self, index: int) -> tuple[Tensor, Tensor]:
        """Block ``index``'s keys and values as attention reads them: (B, n*S, H, d) each."""
        return self.keys[index].flatten(1, 2), self.values[index].flatten(1, 2)

    def select(self, frames: Sequence[int]) -> FrameKV:
        """The cache cut to ``frames`` (indices into this cache, kept in the order given)."""
        if not frames or any(not 0 <= f < self.frames for f in frames):
            raise ModelInputError(f"FrameKV.select: frames {list(frames)} must be non-empty and lie in "
                                  f"0..{self.frames - 1}")
        index = torch.tensor(list(frames), device=self.keys[0].device)
        return FrameKV(tuple(k.index_select(1, index) for k in self.keys),
                       tuple(v.index_select(1, index) for v in self.values))

    def then(self, later: FrameKV) -> FrameKV:
        """This cache followed by ``later``'s frames (the frames just computed)."""
        if later.shape[:1] + later.shape[2:] != self.shape[:1] + self.shape[2:] or len(later.keys) != len(self.keys):
            raise ModelInputError(f"FrameKV.then: frames of shape {later.shape} cannot follow {self.shape}")
        return FrameKV(tuple(torch.cat(p, dim=1) for p in zip(self.keys, later.keys)),
                       tuple(torch.cat(p, dim=1) for p in zip(self.values, later.values)))


def kept_frames(history: int, recent: int) -> list[int]:
    """Frames a rolling cache keeps of ``history`` frames: the first and the last ``recent``."""
    if recent < 1:
        raise ModelInputError(f"kv_cache_frames = {recent}: a rolling cache keeps at least 1 recent frame")
    return sorted({0, *range(max(0, history - recent), history)}) if history else []


def rolled(cache: FrameKV, recent: int) -> FrameKV:
    """``cache`` with everything but its first frame and its last ``recent`` frames evicted."""
    return cache.select(kept_frames(cache.frames, recent))


def block_causal_mask(frames: int, frames_per_block: int, device: torch.device | str = "cpu") -> Tensor:
    """(F, F) bool: frame i sees frame j when j's block of ``frames_per_block`` is not after i's."""
    if frames < 1 or frames_per_block < 1:
        raise ModelInputError(f"block-causal mask: frames = {frames} and frames_per_block = "
                              f"{frames_per_block} must both be ≥ 1")
    block = torch.arange(frames, device=device) // frames_per_block
    return block[None, :] <= block[:, None]
