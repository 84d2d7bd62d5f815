"""Spatial tiling: planning, exact blending for local functions, error and activation size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wanflow.errors import ModelInputError
from wanflow.models.vae import TileSpec
from wanflow.models.vae.tiling import plan_tiles, run_tiled

from ._fixtures import latents, video


def test_tiles_cover_the_grid_with_at_most_stride_between_origins():
    tiles = plan_tiles(32, 50, TileSpec((16, 20), (12, 15)))
    rows = sorted({t.rows for t in tiles})
    cols = sorted({t.cols for t in tiles})
    assert len(tiles) == len(rows) * len(cols) == 3 * 3
    for spans, length, stride in ((rows, 32, 12), (cols, 50, 15)):
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(b[0] - a[0] <= stride for a, b in zip(spans, spans[1:]))


def test_one_tile_when_the_tile_is_larger_than_the_grid():
    assert [(t.rows, t.cols) for t in plan_tiles(4, 6, TileSpec())] == [((0, 4), (0, 6))]


def test_blending_is_exact_for_a_pixelwise_function():
    """Weights are normalised: a function without spatial context gives the untiled result."""
    x = torch.randn(1, 2, 3, 10, 13)
    fn = lambda t: F.interpolate(t, scale_factor=(1, 4, 4)) * 2 + 1  # noqa: E731
    calls = []
    tiled = run_tiled(fn, x, plan_tiles(10, 13, TileSpec((4, 5), (3, 3))), in_scale=1, out_scale=4,
                      progress=lambda done, total: calls.append((done, total)))
    assert torch.allclose(tiled, fn(x), atol=1e-6)
    assert calls == [(i, 12) for i in range(1, 13)]  # 3 rows x 4 columns of tiles


def test_tiled_vae_is_close_to_untiled(tiny):
    """Tiles see less context, so they differ from the untiled pass; the blend keeps it small."""
    spec = TileSpec((4, 4), (2, 2))
    x, z = video(tiny, 1, h=6, w=6), latents(tiny, 1, h=6, w=6)
    enc_err = (tiny.encode(x, tile=spec) - tiny.encode(x)).abs().max() / tiny.encode(x).abs().max()
    full = tiny.decode_raw(z)
    dec_err = (tiny.decode_raw(z, tile=spec) - full).abs().max() / full.abs().max()
    # measured (random weights; the mid attention sees one tile only): wan2.1 encode 0.023,
    # decode 0.13; wan2.2 encode 0.19, decode 0.22 of the output scale
    assert enc_err < 0.3 and dec_err < 0.3, (enc_err, dec_err)


def test_tiling_shrinks_the_largest_activation(tiny):
    """Peak memory follows the largest intermediate tensor, which tiling makes smaller."""
    z, spec = latents(tiny, 1, h=8, w=8), TileSpec((4, 4), (4, 4))
    untiled, tiled = _largest_activation(tiny, z, None), _largest_activation(tiny, z, spec)
    assert tiled * 3 < untiled  # a 4x4 tile of an 8x8 grid: a quarter of the pixels


def _largest_activation(vae, z, spec) -> int:
    sizes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
             for m in vae.decoder.modules() if not list(m.children())]
    try:
        vae.decode(z, tile=spec)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


@pytest.mark.parametrize("size, stride, word", [
    ((4, 4), (5, 2), "tile_stride"), ((0, 4), (1, 1), "tile_size"), ((4,), (2, 2), "tile_size"),
    ((4, 4), (2, 2.5), "tile_stride"),
])
def test_bad_tile_specs_are_refused(size, stride, word):
    with pytest.raises(ModelInputError, match=word):
        TileSpec(size, stride)
