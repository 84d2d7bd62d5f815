"""fp8 matmuls: tokens quantised one by one, multiplied with the fp8 weights, and where they may run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wanflow.errors import ModelLoadError
from wanflow.models import fp8_matmul
from wanflow.models.dit_loader import load_dit
from wanflow.models.fp8 import Fp8Linear, fp8_layers, quantise, use_fp8_matmul
from wanflow.models.fp8_matmul import quantise_tokens, scaled_linear

from ._dit_fixtures import random_state, tiny_config

E4M3 = torch.float8_e4m3fn
#: The tests that multiply on the CPU need a torch whose CPU kernel takes per-token scales (2.13).
cpu_fp8 = pytest.mark.skipif(not fp8_matmul.cpu_takes_row_scales(),
                             reason=f"torch {torch.__version__}'s CPU fp8 matmul takes per-tensor scales only")


def _layer(rows: int = 48, cols: int = 64, seed: int = 0) -> Fp8Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = Fp8Linear(cols, rows)
    layer.weight.data, layer.scale_weight = quantise(torch.randn(rows, cols, generator=gen) * 0.02, "row")
    layer.bias.data = torch.randn(rows, generator=gen) * 0.1
    return layer


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _quantised_product(x: torch.Tensor, layer: Fp8Linear) -> torch.Tensor:
    """What the kernel must compute, in plain fp32 arithmetic: each token rounded to e4m3 at its
    own scale, times the fp8 weight at its row scales, plus the bias."""
    rows = x.float().reshape(-1, x.shape[-1])
    scale = rows.abs().amax(dim=1, keepdim=True) / 448
    tokens = (rows / scale).to(E4M3).float() * scale
    return tokens @ (layer.weight.float() * layer.scale_weight).t() + layer.bias.float()


@cpu_fp8
def test_scaled_linear_is_the_product_of_the_quantised_tokens_and_weights():
    layer = _layer()
    x = torch.randn(2, 7, 64)
    expected = _quantised_product(x, layer)
    out = scaled_linear(x, layer.weight, layer.scale_weight, layer.bias)
    assert out.shape == (2, 7, 48) and out.dtype == torch.float32
    assert (out.reshape(-1, 48) - expected).abs().max().item() < 1e-5 * expected.abs().max().item()


@cpu_fp8
def test_each_token_keeps_its_own_precision():
    """Tokens six decades apart: one scale per token rounds each as finely as the others (one
    scale for the whole input would flush the small ones to zero)."""
    layer = _layer()
    x = torch.randn(6, 64) * torch.logspace(-3, 3, 6)[:, None]
    out = scaled_linear(x, layer.weight, layer.scale_weight, None)
    exact = F.linear(x, layer.weight.float() * layer.scale_weight)
    errors = [_relative(out[i], exact[i]) for i in range(6)]
    assert max(errors) < 0.08 and max(errors) < 3 * min(errors)


@cpu_fp8
def test_a_zero_token_gives_the_bias_not_nan():
    layer = _layer()
    out = scaled_linear(torch.zeros(2, 64), layer.weight, layer.scale_weight, layer.bias)
    assert torch.allclose(out, layer.bias.expand(2, -1), atol=1e-6)


def test_quantise_tokens_maps_each_tokens_largest_value_onto_448():
    rows = torch.randn(5, 32) * torch.tensor([1e-4, 0.1, 1.0, 10.0, 1e4])[:, None]
    stored, scale = quantise_tokens(rows.bfloat16())
    assert stored.dtype == E4M3 and scale.shape == (5, 1) and scale.dtype == torch.float32
    assert torch.equal(stored.float().abs().amax(dim=1), torch.full((5,), 448.0))


@cpu_fp8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_fp8_layer_switched_to_fp8_matmul_multiplies_in_fp8(dtype):
    layer = _layer()
    layer.bias.data = layer.bias.data.to(dtype)  # as a model in dtype holds it (Module.to would cast the fp8 too)
    x = torch.randn(3, 5, 64).to(dtype)
    dequantised = layer(x)
    layer.matmul = "fp8"
    out = layer(x)
    assert out.dtype == dtype
    assert torch.equal(out, scaled_linear(x, layer.weight, layer.scale_weight, layer.bias))
    assert 0 < _relative(out.float(), dequantised.float()) < 0.06  # the tokens' own rounding, no more


def _dit_file(tmp_path, variant="t2v"):
    from safetensors.torch import save_file

    path = tmp_path / "dit.safetensors"
    save_file(random_state(tiny_config(variant)), str(path))
    return path


def _velocity(model, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 3, 8, 8, generator=gen)
    context = torch.randn(1, 12, 4096, generator=gen)
    return model(x, torch.tensor([500.0]), context)


@cpu_fp8
def test_load_dit_with_fp8_matmul_multiplies_every_block_projection_in_fp8(tmp_path):
    cfg, path = tiny_config("t2v"), _dit_file(tmp_path)
    full = load_dit(path, dtype=torch.float32)
    stored = load_dit(path, dtype=torch.float32, storage="fp8")
    multiplied = load_dit(path, dtype=torch.float32, storage="fp8-matmul")
    assert {layer.matmul for layer in fp8_layers(stored).values()} == {"dequantise"}
    assert set(fp8_layers(multiplied)) == set(fp8_layers(stored))
    assert {layer.matmul for layer in fp8_layers(multiplied).values()} == {"fp8"}
    with torch.no_grad():
        ref, v_stored, v_mult = (_velocity(m, cfg) for m in (full, stored, multiplied))
    assert 0 < _relative(v_mult, v_stored) and _relative(v_mult, ref) < 0.1


def test_a_checkpoint_scaled_per_block_of_a_row_is_refused_for_fp8_matmul(tmp_path):
    model = load_dit(_dit_file(tmp_path), dtype=torch.float32, storage="fp8")
    layer = fp8_layers(model)["blocks.1.ffn.0"]
    layer.scale_weight = torch.ones(layer.out_features, 4, 1)
    with pytest.raises(ModelLoadError, match=r"blocks\.1\.ffn\.0: its scale \(256, 4, 1\) is per block") as err:
        use_fp8_matmul(model, "dit.safetensors")
    assert "Set fp8_matmul = false" in str(err.value)
    assert {layer.matmul for layer in fp8_layers(model).values()} == {"dequantise"}  # nothing half-switched


def test_a_gradient_through_an_fp8_matmul_is_refused_not_silently_cut():
    layer = _layer()
    layer.matmul = "fp8"
    with pytest.raises(RuntimeError, match="fp8 matmuls have no backward"):
        layer(torch.randn(2, 64, requires_grad=True))


def test_where_fp8_matmuls_cannot_run(monkeypatch):
    monkeypatch.setattr(fp8_matmul, "cpu_takes_row_scales", lambda: True)
    assert fp8_matmul.problems("cpu", "fp32") == []
    monkeypatch.setattr(fp8_matmul, "cpu_takes_row_scales", lambda: False)
    assert fp8_matmul.problems("cpu", "fp32") == [
        f"torch {torch.__version__}'s CPU fp8 matmul takes one scale per tensor, not one per token; "
        "run on an sm89+ GPU or upgrade torch (2.13 multiplies per-token scales on the CPU)"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fp8_matmul.problems("cuda", "bf16") == ["torch sees no CUDA device on this machine"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 6))
    assert fp8_matmul.problems("cuda", "fp16") == [
        "its GPU kernels return bf16 only (the DiT runs in fp16)",
        "it needs a GPU with fp8 tensor cores, sm89 or later (Ada, Hopper, Blackwell); this GPU is sm86"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    assert fp8_matmul.problems("cuda:0", "bf16") == []


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a GPU with fp8 tensor cores")
def test_the_gpu_kernel_computes_the_quantised_product():
    layer = _layer(rows=256, cols=128)
    x = torch.randn(1, 37, 128).bfloat16()  # a token count that is no multiple of 16
    gpu = scaled_linear(x.cuda(), layer.weight.cuda(), layer.scale_weight.cuda(),
                        layer.bias.bfloat16().cuda()).float().cpu()
    assert _relative(gpu.reshape(-1, 256), _quantised_product(x, layer)) < 1e-2  # bf16's output rounding
