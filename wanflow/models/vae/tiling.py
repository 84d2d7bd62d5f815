"""Spatial tiling: overlapping tiles run as independent work items, blended with linear ramps."""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import torch
from torch import Tensor

from wanflow.errors import ModelInputError

#: Called after each finished tile with (tiles done, tiles in all).
Progress = Callable[[int, int], None]


def _check_pair(name: str, value: object) -> tuple[int, int]:
    """A (height, width) pair of positive ints, or an error naming the argument."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ModelInputError(
            f"{name} = {value!r}: must be two positive ints (height, width) in latent units."
        )
    return (value[0], value[1])


@attrs.frozen
class TileSpec:
    """Tile size and stride in LATENT units, (height, width)."""

    size: tuple[int, int] = (30, 52)  # the Wan pipelines' default: 240x416 px tiles (Wan2.1)
    stride: tuple[int, int] = (15, 26)  # half the size: every seam is blended over half a tile

    def __attrs_post_init__(self) -> None:
        size, stride = _check_pair("tile_size", self.size), _check_pair("tile_stride", self.stride)
        if stride[0] > size[0] or stride[1] > size[1]:
            raise ModelInputError(
                f"tile_stride = {stride} is larger than tile_size = {size}: tiles would leave gaps; "
                "use a stride no larger than the size (about half the size blends well)."
            )
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "stride", stride)


@attrs.frozen
class Tile:
    """One work item: a [start, stop) range of latent rows and of latent columns."""

    rows: tuple[int, int]
    cols: tuple[int, int]


def axis_starts(length: int, size: int, stride: int) -> list[int]:
    """Evenly spread tile origins covering [0, length), no further apart than `stride`."""
    if size >= length:
        return [0]
    count = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def plan_tiles(height: int, width: int, spec: TileSpec) -> list[Tile]:
    """The tiles covering a (height, width) latent grid, row by row."""
    rows = [(s, min(s + spec.size[0], height)) for s in axis_starts(height, spec.size[0], spec.stride[0])]
    cols = [(s, min(s + spec.size[1], width)) for s in axis_starts(width, spec.size[1], spec.stride[1])]
    return [Tile(r, c) for r in rows for c in cols]


def _ramp(start: int, stop: int, ends: list[tuple[int, int]], scale: int) -> Tensor:
    """1-D weights of a tile: linear ramps over its overlaps with the neighbours, 1 elsewhere."""
    n = (stop - start) * scale
    weight = torch.ones(n)
    before = max((e for s, e in ends if s < start < e), default=start) - start  # overlap in front
    after = stop - min((s for s, e in ends if s < stop < e and s > start), default=stop)
    for width, flip in ((before * scale, False), (after * scale, True)):
        if width > 0:
            ramp = (torch.arange(width, dtype=torch.float32) + 0.5) / width  # (width,)
            ramp = ramp.flip(0) if flip else ramp
            sl = slice(n - width, n) if flip else slice(0, width)
            weight[sl] = torch.minimum(weight[sl], ramp)
    return weight


def run_tiled(
    fn: Callable[[Tensor], Tensor], x: Tensor, tiles: list[Tile], *, in_scale: int, out_scale: int,
    progress: Progress | None = None,
) -> Tensor:
    """Apply `fn` tile by tile and blend: overlapping outputs are averaged with ramp weights.

    Args:
        x: (B, C, T, H, W) with H, W = latent grid x `in_scale`.
        in_scale / out_scale: pixels per latent on the input / output side (1 for latents).
    """
    if len(tiles) == 1:
        out = fn(x)
        _report(progress, 1, 1)
        return out
    rows = sorted({t.rows for t in tiles})
    cols = sorted({t.cols for t in tiles})
    out = weight_sum = None
    for done, tile in enumerate(tiles, start=1):
        (r0, r1), (c0, c1) = tile.rows, tile.cols
        y = fn(x[..., r0 * in_scale:r1 * in_scale, c0 * in_scale:c1 * in_scale])
        if out is None:
            shape = (*y.shape[:3], rows[-1][1] * out_scale, cols[-1][1] * out_scale)
            out = y.new_zeros(shape, dtype=torch.float32)  # (B, C, T, H, W)
            weight_sum = torch.zeros(shape[-2:], device=y.device)
        w = torch.outer(_ramp(r0, r1, rows, out_scale), _ramp(c0, c1, cols, out_scale)).to(y.device)
        region = (..., slice(r0 * out_scale, r1 * out_scale), slice(c0 * out_scale, c1 * out_scale))
        out[region].add_(y.float() * w)
        weight_sum[region[1:]] += w
        _report(progress, done, len(tiles))
    return out.div_(weight_sum).to(x.dtype)


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
