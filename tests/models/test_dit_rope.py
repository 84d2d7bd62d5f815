"""3-axis RoPE in real arithmetic against the paper's complex float64 formula."""

from __future__ import annotations

import torch

from wanflow.models.rope import apply_rope, axis_dims, rope_table


def complex_rope_reference(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """x (B, L, H, D): pair (2i, 2i+1) as a complex number times exp(1j * pos_axis * theta_i)."""
    f, h, w = grid
    d = x.shape[-1]
    c = d // 2
    split = [c - 2 * (c // 3), c // 3, c // 3]  # complex frequencies per axis
    tables = []
    for n, positions in zip(split, grid):
        dim = 2 * n
        inv = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        tables.append(torch.polar(torch.ones(positions, n, dtype=torch.float64),
                                  torch.outer(torch.arange(positions, dtype=torch.float64), inv)))
    per_token = torch.cat([
        tables[0][:, None, None].expand(f, h, w, -1),
        tables[1][None, :, None].expand(f, h, w, -1),
        tables[2][None, None, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, c)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], c, 2))
    return torch.view_as_real(xc * per_token).flatten(-2)


def test_axis_split_of_head_dim_128_is_44_42_42():
    assert axis_dims(128) == (44, 42, 42)
    assert axis_dims(64) == (24, 20, 20)


def test_real_rope_matches_complex_float64():
    grid = (3, 5, 7)
    x = torch.randn(2, 105, 3, 128, dtype=torch.float64).float()
    ours = apply_rope(x, rope_table(grid, 128, torch.device("cpu"), torch.float32))
    ref = complex_rope_reference(x, grid)
    assert (ours.double() - ref).abs().max() < 2e-6
    assert (ref - x.double()).abs().max() > 0.5  # the rotation is not the identity
    # the first token (all positions 0) is not rotated
    assert torch.allclose(ours[:, 0], x[:, 0])


def test_rope_preserves_pair_norms_and_relative_positions():
    grid = (4, 1, 1)
    table = rope_table(grid, 64, torch.device("cpu"), torch.float32)
    q = torch.randn(1, 1, 1, 64).expand(1, 4, 1, 64)
    k = torch.randn(1, 1, 1, 64).expand(1, 4, 1, 64)
    rq, rk = apply_rope(q, table), apply_rope(k, table)
    dots = (rq[0, :, 0] @ rk[0, :, 0].T)  # (4, 4) logits between frames
    assert torch.allclose(dots.diagonal(1), dots.diagonal(1)[:1].expand(3), atol=1e-4)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_tables_are_cached_per_shape_and_dtype():
    cpu = torch.device("cpu")
    a = rope_table((2, 3, 4), 64, cpu, torch.float32)
    assert rope_table((2, 3, 4), 64, cpu, torch.float32) is a
    assert rope_table((2, 3, 5), 64, cpu, torch.float32) is not a
    assert rope_table((2, 3, 4), 64, cpu, torch.bfloat16)[0].dtype == torch.bfloat16
