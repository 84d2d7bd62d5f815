"""3-axis rotary position embedding (RoPE) of the Wan DiT, in real arithmetic.

The head dim is split into a frame, a height and a width part (44/42/42 real dims at head dim
128). Adjacent channel pairs (2i, 2i+1) are rotated by the angle position * theta^(-2i/n) of
their axis, n being that axis' real dim. The angles are computed in float64 and the tables are
built once per (grid, head dim, device, dtype) and cached; applying them needs no complex numbers.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

#: Base of the rotation frequencies (RoFormer; the official Wan value).
THETA = 10000.0

#: How many distinct (grid, device, dtype) tables are kept; a run uses one or two shapes.
CACHE_SIZE = 16


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims given to the frame, height and width axes: d - 4(d//6), 2(d//6), 2(d//6)."""
    third = 2 * (head_dim // 6)
    return head_dim - 2 * third, third, third


def axis_angles(positions: int, dim: int, theta: float = THETA) -> Tensor:
    """Float64 angles pos * theta^(-2i/dim) for one axis: (positions, dim // 2)."""
    inv_freq = theta ** -(torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return torch.outer(torch.arange(positions, dtype=torch.float64), inv_freq)


def grid_angles(grid: tuple[int, int, int], head_dim: int) -> Tensor:
    """Float64 angles of every token of an (f, h, w) patch grid, f-major: (f*h*w, head_dim // 2)."""
    f, h, w = grid
    af, ah, aw = (axis_angles(n, d) for n, d in zip(grid, axis_dims(head_dim)))
    parts = (
        af[:, None, None, :].expand(f, h, w, -1),
        ah[None, :, None, :].expand(f, h, w, -1),
        aw[None, None, :, :].expand(f, h, w, -1),
    )
    return torch.cat(parts, dim=-1).reshape(f * h * w, head_dim // 2)  # (L, d/2)


@functools.lru_cache(maxsize=CACHE_SIZE)
def rope_table(
    grid: tuple[int, int, int], head_dim: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """(cos, signed sin) tables, each (L, 1, head_dim), pair-interleaved; cached, never mutate."""
    angles = grid_angles(grid, head_dim)
    cos = angles.cos().repeat_interleave(2, dim=-1)  # (L, d)
    sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)  # (L, d): -s, +s, ...
    return (
        cos.unsqueeze(1).to(device=device, dtype=dtype),
        sin.unsqueeze(1).to(device=device, dtype=dtype),
    )


def apply_rope(x: Tensor, table: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate the adjacent channel pairs of x (B, L, H, D): (a, b) -> (a c - b s, a s + b c)."""
    cos, sin = table
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (B, L, H, D): b, a, ...
    return torch.addcmul(x * cos, swapped, sin)
