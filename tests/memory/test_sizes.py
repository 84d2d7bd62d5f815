"""Component sizes read off safetensors headers (no tensor read, no torch in the module)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from wanflow.errors import ModelLoadError
from wanflow.memory.sizes import component_size, read_header
from wanflow.models.dit import keeps_fp32
from wanflow.models.dit_keys import COMFYUI_TO_OFFICIAL, DIFFUSERS_TO_OFFICIAL

from ..models._dit_fixtures import random_state, tiny_config, write_checkpoint


@pytest.mark.parametrize("layout", ["official", "diffusers", "comfyui"])
def test_dit_sizes_per_block_at_the_stored_dtype(tmp_path, layout):
    cfg = tiny_config("t2v", num_layers=3, text_dim=64)
    state = random_state(cfg)  # fp32 file, sized as a bf16 model with fp32 islands
    path = write_checkpoint(tmp_path, cfg, state, layout=layout)
    table = {"official": (), "diffusers": DIFFUSERS_TO_OFFICIAL, "comfyui": COMFYUI_TO_OFFICIAL}[layout]

    def official_fp32(key: str) -> bool:  # the caller names the islands in the file's layout
        for pattern, replacement in table:
            if re.fullmatch(pattern, key):
                return keeps_fp32(re.fullmatch(pattern, key).expand(replacement))
        return keeps_fp32(key)

    size = component_size("dit", read_header(path), 2, keeps_fp32=official_fp32, blocks=True)
    stored = {k: v.numel() * (4 if keeps_fp32(k) else 2) for k, v in state.items()}
    assert size.block_bytes == tuple(
        sum(b for k, b in stored.items() if k.startswith(f"blocks.{i}.")) for i in range(3))
    assert size.weight_bytes == sum(stored.values())
    assert size.largest_tensor_bytes == max(stored.values())
    matrices = [v for k, v in state.items() if k.startswith("blocks.0.") and v.ndim == 2]
    assert size.fp8_block_bytes[0] == size.block_bytes[0] - sum(m.numel() * 2 - m.numel() for m in matrices)
    every = [v for k, v in state.items() if k.startswith("blocks.") and v.ndim == 2]  # scales: resident
    assert size.fp8_weight_bytes == size.weight_bytes - sum(m.numel() * 2 - m.numel() - 4 * m.shape[0] for m in every)


def test_unreadable_header_is_a_model_load_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x09\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="cannot read a safetensors header"):
        read_header(bad)
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")  # a header longer than the file
    with pytest.raises(ModelLoadError, match="not a complete safetensors file"):
        read_header(bad)


def test_planning_modules_do_not_import_torch(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    code = ("import sys; import wanflow.memory.planner, wanflow.memory.sizes, wanflow.memory.estimates; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_header_is_parsed_once_per_version_of_its_file(tmp_path, monkeypatch):
    """Planning reads the same shards several times: the JSON is parsed once, and again when the
    file is rewritten (another size or modification time), never served stale."""
    from wanflow.memory import sizes

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3)}, str(path))
    parses = []
    real = sizes.json.loads
    monkeypatch.setattr(sizes.json, "loads", lambda raw: parses.append(1) or real(raw))
    sizes._parsed_header.cache_clear()
    first, again = read_header(path), read_header(path)
    assert first == again == {"a": sizes.TensorInfo("F32", (2, 3))} and len(parses) == 1
    first["b"] = None  # a caller's copy: the cache is not changed through it
    assert "b" not in read_header(path)
    save_file({"a": torch.zeros(4, 3), "c": torch.zeros(1)}, str(path))
    assert read_header(path) == {"a": sizes.TensorInfo("F32", (4, 3)), "c": sizes.TensorInfo("F32", (1,))}
    assert len(parses) == 2
