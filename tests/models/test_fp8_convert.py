"""Converting bf16/fp32 checkpoints into scaled-fp8 files, shard by shard, tensor by tensor."""

from __future__ import annotations

import json
import weakref

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from wanflow.errors import ModelLoadError
from wanflow.models.dit_keys import COMFYUI_PREFIX
from wanflow.models.dit_loader import load_dit
from wanflow.models.fp8 import stores_fp8
from wanflow.models.fp8_convert import convert_to_fp8

from ._dit_fixtures import random_state, tiny_config, write_checkpoint

E4M3 = torch.float8_e4m3fn
FULL_PRECISION = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
CFG = tiny_config("i2v")


class FullPrecisionLedger(TorchDispatchMode):
    """Live and peak bytes of host storages in a full-precision dtype that ops allocate.

    A file's mapping is not counted (it is bytes until viewed as a dtype, and views allocate
    nothing); copies of its tensors and every temporary are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        given = {t.untyped_storage()._cdata for t in tensors}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype in FULL_PRECISION:
                storage = t.untyped_storage()
                if storage._cdata not in given and storage._cdata not in self.live:
                    self.live[storage._cdata] = storage.nbytes()
                    weakref.finalize(storage, self.live.pop, storage._cdata, None)
        self.peak = max(self.peak, sum(self.live.values()))
        return out


def _bf16(state):
    return {k: v.bfloat16() for k, v in state.items()}


def test_the_converted_file_has_the_source_keys_plus_scales_and_the_marker(tmp_path):
    state = _bf16(random_state(CFG))
    src = write_checkpoint(tmp_path / "src", CFG, state, layout="comfyui")
    written = convert_to_fp8(src, tmp_path / "fp8")
    assert [p.name for p in written] == ["diffusion_pytorch_model.safetensors", "config.json"]
    out = load_file(str(written[0]))  # the safetensors library reads it
    quantised = {COMFYUI_PREFIX + k for k in state if stores_fp8(k)}
    scales = {k.removesuffix("weight") + "scale_weight" for k in quantised}
    assert set(out) == {COMFYUI_PREFIX + k for k in state} | scales | {COMFYUI_PREFIX + "scaled_fp8"}
    assert {k for k, v in out.items() if v.dtype == E4M3} == quantised | {COMFYUI_PREFIX + "scaled_fp8"}
    assert all(out[k].dtype == torch.float32 and out[k].shape == (out[k[:-12] + "weight"].shape[0], 1)
               for k in scales)
    assert all(torch.equal(out[COMFYUI_PREFIX + k], v) for k, v in state.items() if not stores_fp8(k))


def test_a_converted_file_loads_to_exactly_the_model_quantised_on_load(tmp_path):
    state = _bf16(random_state(CFG))
    src = write_checkpoint(tmp_path / "src", CFG, state, layout="diffusers", shards=3)
    written = convert_to_fp8(src, tmp_path / "fp8")
    index = json.loads((tmp_path / "fp8" / src.name).read_text())["weight_map"]
    assert sorted(set(index.values())) == sorted(p.name for p in written if p.suffix == ".safetensors")
    assert index["blocks.0.attn2.add_k_proj.scale_weight"] == index["blocks.0.attn2.add_k_proj.weight"]
    on_load = load_dit(src, dtype=torch.bfloat16, storage="fp8").state_dict()
    converted = load_dit(tmp_path / "fp8", dtype=torch.bfloat16, storage="fp8").state_dict()
    assert on_load.keys() == converted.keys()
    for key, tensor in on_load.items():
        bits = (lambda t: t.view(torch.uint8)) if tensor.dtype == E4M3 else (lambda t: t)
        assert converted[key].dtype == tensor.dtype and torch.equal(bits(converted[key]), bits(tensor)), key


def test_conversion_holds_one_full_precision_tensor_at_a_time(tmp_path):
    cfg = tiny_config("t2v", dim=64, num_heads=1, ffn_dim=256, num_layers=12, text_dim=64)
    state = _bf16(random_state(cfg))
    src = write_checkpoint(tmp_path / "src", cfg, state, shards=2)
    with FullPrecisionLedger() as ledger:
        convert_to_fp8(src, tmp_path / "fp8")
    largest = max(t.numel() for t in state.values()) * 4  # one tensor in fp32
    model = sum(t.numel() * t.element_size() for t in state.values())
    assert 0 < ledger.peak <= 3 * largest  # its copy and its float32 working copies
    assert 3 * largest < model / 4  # so holding a shard or the model would fail the test


def test_per_tensor_scales_are_comfyui_scalars(tmp_path):
    src = write_checkpoint(tmp_path / "src", CFG, _bf16(random_state(CFG)))
    written = convert_to_fp8(src, tmp_path / "fp8", granularity="tensor")
    with safe_open(str(written[0]), "pt") as f:
        assert f.get_slice("blocks.0.ffn.0.scale_weight").get_shape() == []
        assert f.get_slice("scaled_fp8").get_shape() == [0]
        assert f.metadata()["scale"] == "tensor"


def test_files_already_in_fp8_or_not_a_dit_are_refused(tmp_path):
    src = write_checkpoint(tmp_path / "src", CFG, _bf16(random_state(CFG)))
    convert_to_fp8(src, tmp_path / "fp8")
    with pytest.raises(ModelLoadError, match="already holds fp8 tensors"):
        convert_to_fp8(tmp_path / "fp8", tmp_path / "again")
    (tmp_path / "odd.pth").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="expected .safetensors files"):
        convert_to_fp8(tmp_path / "odd.pth", tmp_path / "out")
    save_file({"encoder.conv1.weight": torch.zeros(2)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ModelLoadError, match="converts Wan DiT checkpoints"):
        convert_to_fp8(tmp_path / "vae.safetensors", tmp_path / "out")


def test_a_conversion_never_overwrites_its_source(tmp_path):
    src = write_checkpoint(tmp_path / "src", CFG, _bf16(random_state(CFG)))
    before = src.read_bytes()
    with pytest.raises(ModelLoadError, match="holds the source shards; write the fp8 checkpoint into another"):
        convert_to_fp8(src, src.parent)
    assert src.read_bytes() == before
