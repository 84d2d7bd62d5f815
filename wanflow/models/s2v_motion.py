"""S2V's extra tokens and where RoPE puts them: frame-pack motion tokens and the reference frame.

The sequence of one S2V forward is [video tokens, reference tokens, motion tokens]:
- video tokens sit at RoPE frames 0..F-1, as in every Wan DiT;
- the reference image's tokens at frame 30 (``REFERENCE_ROPE_FRAME``), its rows and columns as a
  video frame's;
- the motion tokens are the last 19 latent frames of the previous clip, packed coarser the older
  they are (FramePack): the newest 1 frame in (1, 2, 2) patches at frame -1, the 2 before it in
  (2, 4, 4) patches at frame -3, the 16 oldest in (4, 8, 8) patches at frames -19, -14, -9, -4.
  A coarse token takes the rows and columns spread over the full grid, truncated as the release
  computes them (``numpy.linspace(0, n - 1, k).astype(int)``): with 4 rows, a (2, 4, 4) token
  row sits at rows 0 and 3.
A negative frame is the release's conjugated rotation: the angle -p * omega.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor, nn

from wanflow.models.precision import Conv3d
from wanflow.models.rope import THETA, axis_dims
from wanflow.models.s2v_config import (
    MOTION_LATENT_FRAMES,
    PACK_BUCKETS,
    REFERENCE_ROPE_FRAME,
)

#: Distinct (sizes, device, dtype) RoPE tables kept; a run uses one or two.
CACHE_SIZE = 8

#: Each bucket's (frames, height, width) patch, oldest bucket first (16, 2 and 1 latent frames).
BUCKET_PATCHES = ((4, 8, 8), (2, 4, 4), (1, 2, 2))


class FramePacker(nn.Module):
    """``frame_packer``: the last 19 motion latents -> tokens, newest (finest) first."""

    def __init__(self, latent_dim: int, dim: int):
        super().__init__()
        self.proj = Conv3d(latent_dim, dim, BUCKET_PATCHES[2], stride=BUCKET_PATCHES[2])
        self.proj_2x = Conv3d(latent_dim, dim, BUCKET_PATCHES[1], stride=BUCKET_PATCHES[1])
        self.proj_4x = Conv3d(latent_dim, dim, BUCKET_PATCHES[0], stride=BUCKET_PATCHES[0])

    def forward(self, motion: Tensor) -> Tensor:
        """motion (B, C, M <= 19, h, w), oldest first; fewer than 19 frames are zero-padded in
        front, as the release pads the first clips -> (B, N, D) tokens [x1, x2, x4]."""
        missing = MOTION_LATENT_FRAMES - motion.shape[2]
        motion = nn.functional.pad(motion, (0, 0, 0, 0, missing, 0))  # (B, C, 19, h, w)
        oldest, middle, newest = motion.split(PACK_BUCKETS, dim=2)  # 16, 2, 1 frames
        parts = (self.proj(newest), self.proj_2x(middle), self.proj_4x(oldest))  # (B, D, f, h', w') each
        return torch.cat([p.flatten(2).transpose(1, 2) for p in parts], dim=1)


def spread(full: int, count: int) -> np.ndarray:
    """``count`` integer positions spread over 0..full-1 as the release truncates them."""
    return np.linspace(0, full - 1, count).astype(int)


def _grid(frames: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(frame, row, col) of every token of a grid, frame-major: (f * h * w, 3)."""
    f, r, c = np.meshgrid(frames, rows, cols, indexing="ij")
    return np.stack([f.ravel(), r.ravel(), c.ravel()], axis=1)


def video_positions(frames: int, rows: int, cols: int) -> np.ndarray:
    """RoPE positions of the video tokens: the plain grid."""
    return _grid(np.arange(frames), np.arange(rows), np.arange(cols))


def reference_positions(rows: int, cols: int) -> np.ndarray:
    """RoPE positions of the reference tokens: one frame at ``REFERENCE_ROPE_FRAME``."""
    return _grid(np.array([REFERENCE_ROPE_FRAME]), np.arange(rows), np.arange(cols))


def motion_positions(rows: int, cols: int, latent_height: int, latent_width: int) -> np.ndarray:
    """RoPE positions of the motion tokens, [x1, x2, x4] as ``FramePacker`` emits them.

    ``rows``/``cols`` are the video's token grid (latent size / 2); a bucket of patch (t, s, s)
    has latent_height // s rows spread over the ``rows`` positions."""
    newest = _grid(np.array([-1]), np.arange(rows), np.arange(cols))
    middle = _grid(np.array([-3]), spread(rows, latent_height // 4), spread(cols, latent_width // 4))
    old_frames = -np.linspace(MOTION_LATENT_FRAMES, 4, 4).astype(int)  # -19, -14, -9, -4
    oldest = _grid(old_frames, spread(rows, latent_height // 8), spread(cols, latent_width // 8))
    return np.concatenate([newest, middle, oldest])


@functools.lru_cache(maxsize=CACHE_SIZE)
def s2v_rope_table(frames: int, latent_height: int, latent_width: int, motion: bool, head_dim: int,
                   device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(cos, signed sin) of the whole S2V sequence, each (L, 1, head_dim), laid out as
    ``wanflow.models.rope.rope_table`` lays them out; cached, never mutate."""
    rows, cols = latent_height // 2, latent_width // 2
    parts = [video_positions(frames, rows, cols), reference_positions(rows, cols)]
    if motion:
        parts.append(motion_positions(rows, cols, latent_height, latent_width))
    angles = position_angles(torch.from_numpy(np.concatenate(parts)).to(torch.float64), head_dim)
    cos = angles.cos().repeat_interleave(2, dim=-1)  # (L, d)
    sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)  # (L, d): -s, +s, ...
    return cos.unsqueeze(1).to(device=device, dtype=dtype), sin.unsqueeze(1).to(device=device, dtype=dtype)


def position_angles(positions: Tensor, head_dim: int) -> Tensor:
    """Float64 angles of tokens at (frame, row, col) ``positions`` (L, 3): (L, head_dim // 2)."""
    parts = []
    for axis, dim in enumerate(axis_dims(head_dim)):
        inv_freq = THETA ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        parts.append(torch.outer(positions[:, axis], inv_freq))
    return torch.cat(parts, dim=-1)
