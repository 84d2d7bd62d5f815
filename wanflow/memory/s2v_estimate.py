"""A Wan2.2-S2V DiT's forward: the video's tokens, its reference frame's and its motion tokens.

One S2V forward runs its blocks over [video tokens, reference tokens, motion tokens]
(``wanflow.models.s2v_motion``): the reference image is one more latent frame of tokens, and the
last 19 latent frames of the previous clip are packed FramePack-style into one frame of tokens,
one at a quarter and four at a sixteenth. Every clip after the first holds them, so a denoise is
sized with them, and with the RoPE tables of the whole sequence (cos and sin, built for it at each
size); sized over the video's tokens alone it was planned at about 0.55-0.65 of what a tiny
model's forward holds (``tests/memory/test_s2v_estimate.py``).
"""

from __future__ import annotations


from wanflow.memory.estimates import dit_forward_bytes, dit_tokens
from wanflow.models.dit_config import DitConfig
from wanflow.models.s2v_config import PACK_BUCKETS

#: Each motion bucket's patch (frames, then height and width), in ``PACK_BUCKETS``' order
#: (16, 2 and 1 latent frames, oldest first).
BUCKET_PATCHES = ((4, 8), (2, 4), (1, 2))


def extra_tokens(grid: tuple[int, int, int]) -> int:
    """Tokens an S2V DiT's forward adds to the video's on a latent ``grid``."""
    _, height, width = grid
    reference = (height // 2) * (width // 2)
    motion = sum(frames // pt * (height // ps) * (width // ps)
                 for frames, (pt, ps) in zip(PACK_BUCKETS, BUCKET_PATCHES, strict=True))
    return reference + motion


def s2v_forward_bytes(cfg: DitConfig, grid: tuple[int, int, int], itemsize: int, *, batch: int = 1,
                      prepared_contexts: int = 0) -> int:
    """Peak activation bytes of one S2V forward (``dit_forward_bytes``'s arguments)."""
    tokens = dit_tokens(cfg, grid) + extra_tokens(grid)
    rope = 2 * itemsize * cfg.head_dim * tokens
    return dit_forward_bytes(cfg, grid, itemsize, batch=batch, prepared_contexts=prepared_contexts,
                             extra_tokens=extra_tokens(grid)) + rope
