"""Loading the S2V DiT from a tiny checkpoint in the released layout (config.json, two safetensors
shards, their index json), its sizes read off the keys, and the refusals of other files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.models._dit_fixtures import random_state, tiny_config
from tests.models.test_s2v_model import TINY, inputs, run, seeded_state, tiny
from wanflow.errors import ModelLoadError
from wanflow.models.loading import build_on_meta
from wanflow.models.s2v import S2VDiT
from wanflow.models.s2v_config import RELEASED_INJECT_LAYERS, WAN22_S2V_14B, from_shapes
from wanflow.models.s2v_loader import load_s2v_dit

INDEX = "diffusion_pytorch_model.safetensors.index.json"

#: The released config.json's S2V arguments, at the tiny sizes.
CONFIG = {
    "_class_name": "WanModel_S2V", "model_type": "s2v", "dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 3,
    "in_dim": 16, "out_dim": 16, "freq_dim": 32, "eps": 1e-6, "text_len": 512, "audio_dim": 24, "cond_dim": 16,
    "audio_inject_layers": [0, 2], "enable_adain": True, "adain_mode": "attn_norm", "zero_init": True,
    "zero_timestep": True, "enable_motioner": False, "enable_framepack": True, "framepack_drop_mode": "padd",
    "add_last_motion": True, "motion_frames": 73,
}


def released_layout(folder: Path, state: dict[str, torch.Tensor], config: dict | None = CONFIG) -> Path:
    """config.json, diffusion_pytorch_model-0000{1,2}-of-00002.safetensors and the index."""
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    weight_map = {k: names[0] if k.startswith(("blocks.0.", "patch_", "casual_")) else names[1] for k in state}
    for name in names:
        save_file({k: v.contiguous() for k, v in state.items() if weight_map[k] == name}, str(folder / name))
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("entry", ["folder", "index"])
def test_the_released_layout_loads_and_computes_what_the_weights_say(tmp_path, entry):
    source = tiny(seed=3)
    folder = released_layout(tmp_path / "Wan2.2-S2V-14B", source.state_dict())
    model = load_s2v_dit(folder if entry == "folder" else folder / INDEX)
    assert model.s2v_config == TINY
    data = inputs()
    assert torch.equal(run(model, data), run(source, data))


def test_the_released_sizes_are_read_off_the_keys():
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: S2VDiT(WAN22_S2V_14B)).state_dict().items()}
    assert len(shapes) == 1260  # the released file's tensor count
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 16_295_755_609  # 16.296 B
    config = from_shapes(shapes, "s2v.safetensors")
    assert config == WAN22_S2V_14B and config.inject_layers == RELEASED_INJECT_LAYERS
    assert (config.audio_layers, config.audio_dim, config.audio_tokens, config.dit.num_heads) == (25, 1024, 4, 40)


def test_a_tiny_file_without_its_config_json_says_what_is_missing(tmp_path):
    folder = released_layout(tmp_path / "s2v", seeded_state(), config=None)
    with pytest.raises(ModelLoadError, match="2 audio injectors in a 3-layer DiT.*config.json naming audio_inject_layers"):
        load_s2v_dit(folder)


@pytest.mark.parametrize("change, words", [
    ({"framepack_drop_mode": "drop"}, "framepack_drop_mode = 'drop' (the release: 'padd')"),
    ({"audio_inject_layers": [0, 1, 2]}, "names 3 audio injector blocks [0, 1, 2], but the weights hold 2"),
    ({"audio_inject_layers": [2, 0]}, "must be distinct rising block indices"),
    ({"num_heads": 3}, "must split into num_heads = 3 heads"),
])
def test_a_config_json_the_weights_or_wanflow_cannot_follow_is_refused(tmp_path, change, words):
    folder = released_layout(tmp_path / "s2v", seeded_state(), config=CONFIG | change)
    with pytest.raises(ModelLoadError) as err:
        load_s2v_dit(folder)
    assert words in str(err.value)


def test_a_wan_t2v_dit_is_refused_saying_what_it_is(tmp_path):
    path = tmp_path / "t2v.safetensors"
    save_file(random_state(tiny_config("t2v")), str(path))
    with pytest.raises(ModelLoadError) as err:
        load_s2v_dit(path)
    message = str(err.value)
    assert "not a Wan2.2 S2V checkpoint" in message and "looks like a Wan T2V DiT" in message
    assert str(path) in message


def test_a_checkpoint_missing_a_shard_is_refused_as_incomplete():
    state = {k: v for k, v in seeded_state().items() if not k.startswith("audio_injector.")}
    with pytest.raises(ModelLoadError, match="incomplete Wan2.2 S2V checkpoint.*no audio_injector tensors"):
        load_s2v_dit(state)


def test_a_mis_shaped_tensor_is_named(tmp_path):
    state = seeded_state()
    state["trainable_cond_mask.weight"] = torch.zeros(2, 64)
    folder = released_layout(tmp_path / "s2v", state)
    with pytest.raises(ModelLoadError, match=r"trainable_cond_mask.weight: file \(2, 64\) vs model \(3, 64\)"):
        load_s2v_dit(folder)


def test_comfyui_single_file_loads_under_its_prefix(tmp_path):
    source = tiny(seed=4)
    folder = tmp_path / "comfy"
    folder.mkdir()
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in source.state_dict().items()},
              str(folder / "wan2.2_s2v_tiny.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    model = load_s2v_dit(folder / "wan2.2_s2v_tiny.safetensors")
    data = inputs()
    assert torch.equal(run(model, data), run(source, data))


def test_bf16_loading_keeps_the_audio_encoder_and_the_islands_fp32(tmp_path):
    folder = released_layout(tmp_path / "s2v", seeded_state())
    model = load_s2v_dit(folder, dtype=torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["casual_audio_encoder.weights"] == dtypes["casual_audio_encoder.encoder.conv3.conv.weight"] == torch.float32
    assert dtypes["blocks.1.modulation"] == dtypes["head.head.weight"] == torch.float32
    assert dtypes["audio_injector.injector.0.q.weight"] == dtypes["frame_packer.proj_4x.weight"] == torch.bfloat16


def test_an_s2v_file_is_described_as_s2v_to_other_loaders():
    from wanflow.models.signature import architecture_mismatch, identify

    found = identify(seeded_state())
    assert found.variant == "wan2.2-s2v" and "Wan2.2 S2V" in found.describe()
    assert architecture_mismatch("wan2.2-s2v-14b", found) is None
    assert "looks like a Wan2.2 S2V DiT" in architecture_mismatch("wan2.1-t2v-14b", found)
