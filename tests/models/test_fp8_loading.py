"""Loading a DiT with fp8 storage: quantised on load from bf16/fp32 files, or from scaled-fp8 files.

Tolerance. With fp8 storage the tiny DiT's velocity differs from the bf16 model's by 2.1-4.2 %
relative RMS (18 cases: three variants, three weight seeds, two inputs; bf16 storage alone is
~0.5 % from fp32): the 2.6 % rounding of e4m3 weights, through two blocks. ``TOLERANCE`` is 1.5x
the largest; ``FLOOR`` is what shows the weights really were quantised.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanflow.errors import ModelLoadError
from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.dit import WanDiT, keeps_fp32
from wanflow.models.dit_keys import COMFYUI_PREFIX
from wanflow.models.dit_loader import load_dit
from wanflow.models.fp8 import Fp8Linear, stores_fp8
from wanflow.models.fp8_scaled import load_scaled, split_scales
from wanflow.models.loading import build_on_meta

from ._dit_fixtures import inputs, random_state, tiny_config, write_checkpoint
from ._memory_probes import DeviceLedger, mapped_rss_kib, module_bytes

TOLERANCE = 0.06
FLOOR = 0.01
E4M3 = torch.float8_e4m3fn
CFG = tiny_config("i2v")


@pytest.fixture(scope="module")
def state():
    return random_state(CFG, seed=1)


@pytest.fixture(scope="module")
def bf16_velocity(state):
    model = load_dit(state, CFG, dtype=torch.bfloat16).eval()
    return _velocity(model)


def _velocity(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**inputs(CFG, seed=3)).float()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _by_hand(state: dict, *, prefix: str = "", suffix: str = ".scale_weight", marker: bool = True) -> dict:
    """A ComfyUI-style scaled-fp8 state, built here: per-tensor scale amax/448 (0-d float32),
    e4m3fn weights, the rest bf16, the ``scaled_fp8`` marker, and unused input scales."""
    out = {f"{prefix}scaled_fp8": torch.empty(0, dtype=E4M3)} if marker else {}
    for key, tensor in state.items():
        if stores_fp8(key):
            scale = tensor.abs().max() / 448.0
            out[prefix + key] = (tensor / scale).to(E4M3)
            out[prefix + key.removesuffix(".weight") + suffix] = scale.float()
            out[prefix + key.removesuffix(".weight") + ".scale_input"] = torch.ones(())
        else:
            out[prefix + key] = tensor.bfloat16()
    return out


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.bfloat16])
def test_quantised_on_load_from_a_full_precision_file(tmp_path, state, bf16_velocity, file_dtype):
    path = write_checkpoint(tmp_path, CFG, {k: v.to(file_dtype) for k, v in state.items()})
    model = load_dit(path, dtype=torch.bfloat16, storage="fp8")
    error = _relative(_velocity(model), bf16_velocity)
    assert FLOOR < error < TOLERANCE


def test_fp8_weights_take_one_byte_each(state):
    bf16 = load_dit(state, CFG, dtype=torch.bfloat16)
    model = load_dit(state, CFG, dtype=torch.bfloat16, storage="fp8")
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert len(layers) == 12 * CFG.num_layers
    fp8_weights = sum(m.weight.numel() for m in layers)
    assert all(m.weight.dtype == E4M3 and m.weight.element_size() == 1 for m in layers)
    scales = sum(m.scale_weight.numel() * 4 for m in layers)
    assert scales == sum(m.out_features * 4 for m in layers)  # one float32 per output row
    assert module_bytes(model) == module_bytes(bf16) - fp8_weights + scales  # 2 bytes -> 1 byte


def test_quantise_on_load_sends_only_fp8_bytes_of_those_layers_to_the_device(tmp_path, state):
    path = write_checkpoint(tmp_path, CFG, state)  # fp32 file
    with DeviceLedger() as ledger:
        model = load_dit(path, dtype=torch.bfloat16, device="meta", storage="fp8")
    fp8_bytes = sum(t.numel() for k, t in state.items() if stores_fp8(k))
    islands = sum(t.numel() * 4 for k, t in state.items() if keeps_fp32(k))
    scales = sum(t.shape[0] * 4 for k, t in state.items() if stores_fp8(k))
    rest = sum(t.numel() * 2 for k, t in state.items() if not stores_fp8(k) and not keeps_fp32(k))
    assert ledger.arrived[E4M3] == fp8_bytes
    assert ledger.arrived[torch.float32] == islands + scales
    assert ledger.arrived[torch.bfloat16] == rest
    assert ledger.peak <= module_bytes(model)


def test_quantising_releases_the_files_pages_as_it_goes(tmp_path, state):
    path = write_checkpoint(tmp_path, CFG, state)  # fp32
    mapped = open_state_dict(path)  # kept alive: only the release can drop its pages
    assert sum(float(t.sum()) for t in mapped.values()) != 0  # every page read in
    size_kib = path.stat().st_size // 1024
    assert mapped_rss_kib(path) > 0.9 * size_kib
    model = build_on_meta(lambda: WanDiT(CFG))
    load_scaled(model, split_scales(mapped, str(path)), source=str(path), expected="a DiT",
                dtype=lambda key: torch.bfloat16, device="cpu", borrowed=False, fp8=True)
    assert mapped_rss_kib(path) < 0.05 * size_kib  # pages shared by small tensors may stay


@pytest.mark.parametrize("prefix, suffix", [("", ".scale_weight"), (COMFYUI_PREFIX, ".scale_weight"),
                                            ("", ".weight_scale")])
def test_a_scaled_fp8_file_keeps_its_bytes_and_scales(tmp_path, state, bf16_velocity, prefix, suffix):
    handmade = _by_hand(state, prefix=prefix, suffix=suffix)
    save_file(handmade, str(tmp_path / "dit.safetensors"))
    model = load_dit(tmp_path / "dit.safetensors", CFG, dtype=torch.bfloat16, storage="fp8")
    loaded = model.state_dict()
    q = "blocks.1.cross_attn.k_img."
    assert loaded[q + "weight"].dtype == E4M3
    file_bytes = handmade[prefix + q + "weight"].view(torch.uint8)
    assert torch.equal(loaded[q + "weight"].view(torch.uint8), file_bytes)
    assert loaded[q + "scale_weight"] == handmade[prefix + q + suffix[1:]]
    assert FLOOR < _relative(_velocity(model), bf16_velocity) < TOLERANCE


def test_a_scaled_fp8_file_loaded_without_fp8_storage_computes_the_same_numbers(tmp_path, state):
    save_file(_by_hand(state), str(tmp_path / "dit.safetensors"))
    kept = load_dit(tmp_path / "dit.safetensors", CFG, dtype=torch.bfloat16, storage="fp8")
    widened = load_dit(tmp_path / "dit.safetensors", CFG, dtype=torch.bfloat16)
    assert not any(isinstance(m, Fp8Linear) for m in widened.modules())
    assert widened.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert torch.equal(_velocity(kept), _velocity(widened))  # dequantised by the same arithmetic


def test_scales_per_block_of_a_row_apply_block_by_block(tmp_path, state):
    stored, scaled_back = {}, {}
    for key, tensor in state.items():
        if stores_fp8(key):
            blocks = tensor.unflatten(1, (2, -1))  # (out, 2, in / 2): two blocks per row
            scale = blocks.abs().amax(dim=2, keepdim=True) / 448.0  # (out, 2, 1)
            stored[key] = (blocks / scale).flatten(1).to(E4M3)
            stored[key.removesuffix("weight") + "scale_weight"] = scale
            scaled_back[key] = (stored[key].float().unflatten(1, (2, -1)) * scale).flatten(1)
        else:
            stored[key] = scaled_back[key] = tensor
    save_file(stored, str(tmp_path / "dit.safetensors"))
    model = load_dit(tmp_path / "dit.safetensors", CFG, storage="fp8")
    assert model.blocks[0].ffn[2].scale_weight.shape == (128, 2, 1)
    reference = load_dit(scaled_back, CFG)  # the same values, written out in fp32
    assert _relative(_velocity(model), _velocity(reference)) < 1e-5


def test_an_unscaled_fp8_file_is_a_plain_cast(tmp_path, state):
    plain = {k: v.to(E4M3) if stores_fp8(k) else v.bfloat16() for k, v in state.items()}
    save_file(plain, str(tmp_path / "dit.safetensors"))
    model = load_dit(tmp_path / "dit.safetensors", CFG, dtype=torch.bfloat16, storage="fp8")
    layer = model.blocks[0].self_attn.q
    assert torch.equal(layer.weight.view(torch.uint8), plain["blocks.0.self_attn.q.weight"].view(torch.uint8))
    assert layer.scale_weight.item() == 1.0


@pytest.mark.parametrize("storage", ["fp8", "compute"])
def test_a_scaled_file_missing_a_scale_is_refused(tmp_path, state, storage):
    handmade = _by_hand(state)
    del handmade["blocks.1.ffn.2.scale_weight"]
    save_file(handmade, str(tmp_path / "dit.safetensors"))
    with pytest.raises(ModelLoadError, match=r"1 fp8 tensors have no '<name>\.scale_weight': "
                                             r"blocks\.1\.ffn\.2\.weight"):
        load_dit(tmp_path / "dit.safetensors", CFG, storage=storage)


def test_a_scale_of_the_wrong_shape_or_without_its_weight_is_refused(tmp_path, state):
    handmade = _by_hand(state)
    handmade["blocks.0.self_attn.v.scale_weight"] = torch.ones(7)
    handmade["blocks.0.self_attn.nothing.scale_weight"] = torch.ones(())
    save_file(handmade, str(tmp_path / "dit.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        load_dit(tmp_path / "dit.safetensors", CFG, storage="fp8")
    assert "blocks.0.self_attn.nothing.weight" in str(err.value)  # the orphan, named as its weight
    assert "blocks.0.self_attn.v.weight: scale of shape (7,)" in str(err.value)


def test_a_corrupt_weight_is_named_when_quantised(tmp_path, state):
    broken = dict(state)
    broken["blocks.0.ffn.0.weight"] = state["blocks.0.ffn.0.weight"].clone()
    broken["blocks.0.ffn.0.weight"][0, 0] = float("nan")
    with pytest.raises(ModelLoadError, match=r"blocks\.0\.ffn\.0\.weight cannot be stored in fp8"):
        load_dit(broken, CFG, storage="fp8")


def test_a_wrong_file_is_reported_as_every_loader_reports_it(state):
    other = random_state(tiny_config("t2v"))
    with pytest.raises(ModelLoadError, match=r"does not fit Wan I2V DiT.*\n.*missing"):
        load_dit(other, CFG, storage="fp8")


def test_the_callers_state_dict_is_neither_aliased_nor_changed(state):
    before = {k: v.clone() for k, v in state.items()}
    model = load_dit(state, CFG, storage="fp8")
    assert all(torch.equal(state[k], before[k]) for k in state)
    norm = model.blocks[0].norm3.weight
    assert norm.data_ptr() != state["blocks.0.norm3.weight"].data_ptr()


def test_a_lora_attached_to_an_fp8_dit_changes_it_as_it_changes_the_full_precision_one(state):
    from wanflow.lora.apply import attach
    from wanflow.lora.delta import LoraFile, LowRank

    gen = torch.Generator().manual_seed(0)
    widths = {"self_attn.o": (128, 128), "cross_attn.k_img": (128, 128), "ffn.0": (256, 128),
              "ffn.2": (128, 256)}  # (out, in)
    lora = LoraFile(dialect="peft", deltas={
        f"blocks.{b}.{name}.weight": LowRank(torch.randn(4, i, generator=gen) * 0.1,
                                             torch.randn(o, 4, generator=gen) * 0.1)
        for b in range(CFG.num_layers) for name, (o, i) in widths.items()})
    effects = []
    for storage in ("compute", "fp8"):
        model = load_dit(state, CFG, storage=storage)
        base = _velocity(model)
        with attach(model, [lora], [1.0]):
            effects.append(_velocity(model) - base)
    assert effects[0].norm() > 0.1 * base.norm()  # the LoRA matters
    assert _relative(effects[1], effects[0]) < 0.1  # and fp8 carries it, to fp8's rounding
