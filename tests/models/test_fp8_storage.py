"""fp8 storage itself: the quantiser, the layer, which layers get it, and refusing a torch without it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wanflow.errors import WanflowError
from wanflow.models.dit import WanDiT
from wanflow.models.dit_loader import load_dit
from wanflow.models.fp8 import (
    FP8_MAX,
    Fp8Linear,
    Fp8UnsupportedError,
    dequantise,
    quantise,
    require_fp8,
    use_fp8_storage,
)
from wanflow.models.loading import build_on_meta

from ._dit_fixtures import random_state, tiny_config

E4M3 = torch.float8_e4m3fn


def _weight(rows: int = 64, cols: int = 96, seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes (a decade apart), std ~0.02 overall."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) * 0.02 * 10 ** torch.linspace(-1, 1, rows)[:, None]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("granularity, scale_shape", [("row", (64, 1)), ("tensor", ())])
def test_quantise_maps_the_largest_value_onto_448_and_rounds_like_fp8(granularity, scale_shape):
    w = _weight()
    stored, scale = quantise(w, granularity)
    assert stored.dtype == E4M3 and stored.shape == w.shape
    assert scale.dtype == torch.float32 and tuple(scale.shape) == scale_shape
    peaks = stored.float().abs().amax(dim=1 if granularity == "row" else None)
    assert torch.all(peaks == FP8_MAX)  # the whole e4m3 range is used, and never exceeded
    error = _relative(dequantise(stored, scale, torch.float32), w)
    assert 0.01 < error < 0.035  # 3 mantissa bits: ~2.6 %; a wrong scale or no rounding is far off


def test_a_row_scale_keeps_small_rows_as_precise_as_large_ones():
    w = _weight(rows=8) * 10 ** torch.tensor([-3.0] + [0.0] * 7)[:, None]  # row 0 a thousand times smaller
    row = dequantise(*quantise(w, "row"), torch.float32)
    tensor = dequantise(*quantise(w, "tensor"), torch.float32)
    assert _relative(row[0], w[0]) < 0.035
    assert _relative(tensor[0], w[0]) > 2 * _relative(row[0], w[0])  # below e4m3's normal range


def test_zero_rows_get_scale_one_and_stay_zero():
    w = _weight(rows=4)
    w[2] = 0
    stored, scale = quantise(w, "row")
    assert scale[2].item() == 1.0
    assert torch.equal(dequantise(stored, scale, torch.float32)[2], torch.zeros(w.shape[1]))
    assert torch.equal(dequantise(*quantise(torch.zeros(3, 5), "tensor"), torch.float32), torch.zeros(3, 5))


def test_quantise_refuses_non_finite_weights():
    w = _weight(rows=4)
    w[1, 3] = float("inf")
    with pytest.raises(ValueError, match="inf or NaN"):
        quantise(w)


def test_quantise_works_in_row_blocks_with_the_same_result(monkeypatch):
    w = _weight(rows=64, cols=96)
    whole = quantise(w, "tensor")
    monkeypatch.setattr("wanflow.models.fp8.QUANT_BLOCK_ELEMENTS", 96 * 5)  # 5 rows per block
    blocked = quantise(w, "tensor")
    assert torch.equal(whole[0].view(torch.uint8), blocked[0].view(torch.uint8))
    assert torch.equal(whole[1], blocked[1])


def test_dequantise_applies_a_scale_per_block_of_each_row():
    stored = torch.randn(4, 6).to(E4M3)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).reshape(4, 2, 1)  # 2 blocks of 3
    expected = stored.float() * scale.repeat_interleave(3, dim=1).reshape(4, 6)
    assert torch.equal(dequantise(stored, scale, torch.float32), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_is_the_linear_of_its_dequantised_weight(dtype):
    w = _weight(rows=24, cols=16)
    layer = Fp8Linear(16, 24, dtype=dtype)
    layer.weight.data, layer.scale_weight = quantise(w, "row")
    layer.bias.data = torch.randn(24).to(dtype)
    x = torch.randn(3, 5, 16).to(dtype)
    expected = F.linear(x.float(), layer.weight.float() * layer.scale_weight, layer.bias.float())
    out = layer(x)
    assert out.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    assert _relative(out.float(), expected) < tol
    assert layer.weight.dtype == E4M3 and not layer.weight.requires_grad


def test_only_the_linear_layers_inside_the_blocks_are_stored_in_fp8():
    cfg = tiny_config("i2v", num_layers=2)
    model = build_on_meta(lambda: WanDiT(cfg))
    names = use_fp8_storage(model)
    per_block = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q",
                 "cross_attn.k", "cross_attn.v", "cross_attn.o", "cross_attn.k_img",
                 "cross_attn.v_img", "ffn.0", "ffn.2"]
    assert sorted(names) == sorted(f"blocks.{i}.{n}" for i in range(2) for n in per_block)
    fp8 = {n for n, p in model.named_parameters() if p.dtype == E4M3}
    assert fp8 == {f"{n}.weight" for n in names}  # biases, norms, embeddings, islands, head: not fp8
    assert all(isinstance(model.get_submodule(n), Fp8Linear) for n in names)


def test_a_torch_without_float8_is_refused_before_anything_loads(monkeypatch, tmp_path):
    monkeypatch.delattr(torch, "float8_e4m3fn")
    missing = tmp_path / "not-read.safetensors"  # would fail differently if it were opened
    with pytest.raises(Fp8UnsupportedError, match=r"torch\.float8_e4m3fn.*torch 2\.") as err:
        load_dit(missing, storage="fp8")
    assert isinstance(err.value, WanflowError)
    assert "bf16" in str(err.value)  # the way out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a device this torch does not have")
def test_a_device_that_cannot_cast_to_fp8_is_refused():
    with pytest.raises(Fp8UnsupportedError, match="device 'cuda'"):
        require_fp8("cuda")


def test_loading_without_fp8_storage_is_unchanged():
    cfg = tiny_config("t2v")
    model = load_dit(random_state(cfg), cfg, dtype=torch.bfloat16)
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    assert all(p.dtype in (torch.bfloat16, torch.float32) for p in model.parameters())
