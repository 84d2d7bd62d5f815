"""Loading the Video-As-Prompt DiT: the released diffusers names (sharded, with config.json),
wanflow's own names, and the refusal of files that are not Video-As-Prompt checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from wanflow.errors import ModelLoadError
from wanflow.models import vap_keys
from wanflow.models.vap_loader import load_vap_dit

from ._dit_fixtures import _write_shards, diffusers_config_json
from .test_vap_parity import (
    model_of,
    run_ours,
    seeded_inputs,
    seeded_state,
    tiny_config,
)


def released_config_json(cfg) -> dict:
    """The config.json of a WanTransformer3DMOTModel of this size."""
    doc = diffusers_config_json(cfg.dit) | {"_class_name": "WanTransformer3DMOTModel"}
    return doc | {"block_idx_with_mot_ref": list(cfg.mot_layers), "attention_head_dim_mot_ref": None}


def released_state(state: dict) -> dict:
    """The released names: the main stream renamed by diffusers' own converter, the reference
    stream by hand (``<first part>_mot_ref``), so the table under test is not its own oracle."""
    main = {k: v for k, v in state.items() if not k.startswith("mot.")}
    out = convert_wan_transformer_to_diffusers(dict(main))
    hand = {"self_attn.q.": "attn1_mot_ref.to_q.", "cross_attn.k_img.": "attn2_mot_ref.add_k_proj.",
            "norm3.": "norm2_mot_ref.", "ffn.0.": "ffn_mot_ref.net.0.proj.", "modulation": "scale_shift_table_mot_ref"}
    for key, value in state.items():
        if key.startswith("mot."):
            out[vap_keys.to_diffusers({key: value}).popitem()[0]] = value
    for ours, theirs in hand.items():  # spot checks of the table against the authors' names
        key = next(k for k in state if k.startswith("mot.blocks.4." + ours))
        assert "blocks.4." + theirs + key[len("mot.blocks.4." + ours):] in out
    assert "condition_embedder_mot_ref.time_proj.weight" in out and "patch_embedding_mot_ref.weight" in out
    return out


def test_the_released_layout_loads_from_a_sharded_index_with_its_config(tmp_path):
    cfg = tiny_config()
    state = seeded_state(cfg, seed=41)
    (tmp_path / "config.json").write_text(json.dumps(released_config_json(cfg)))
    index = _write_shards(tmp_path, released_state(state), shards=3)
    inp = seeded_inputs(seed=42)
    for source in (index, tmp_path):
        loaded = load_vap_dit(source)
        assert loaded.vap_config == cfg
        assert (run_ours(loaded.eval(), inp) - run_ours(model_of(cfg, state), inp)).abs().max() == 0


def test_wanflow_layout_state_dict_loads_with_its_fp32_islands():
    cfg = tiny_config(head_dim=128, mot_layers=(4,))
    state = seeded_state(cfg, seed=43)
    model = load_vap_dit(state, dtype=torch.bfloat16)  # no config.json: head width 128 assumed
    assert model.vap_config == cfg
    assert model.mot.time_embedding[0].weight.dtype == torch.float32
    assert model.mot.blocks["4"].modulation.dtype == torch.float32
    assert model.mot.blocks["4"].self_attn.q.weight.dtype == torch.bfloat16


def test_a_plain_i2v_file_is_refused_saying_what_it_is(tmp_path):
    cfg = tiny_config()
    plain = {k: v for k, v in seeded_state(cfg, seed=44).items() if not k.startswith("mot.")}
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(convert_wan_transformer_to_diffusers(plain), str(path))
    with pytest.raises(ModelLoadError, match=r"not a Video-As-Prompt checkpoint.*Wan2\.1 I2V DiT"):
        load_vap_dit(path)


def test_config_and_weights_that_disagree_are_refused(tmp_path):
    cfg = tiny_config()
    (tmp_path / "config.json").write_text(json.dumps(released_config_json(cfg) | {"block_idx_with_mot_ref": [0, 2]}))
    save_file(released_state(seeded_state(cfg, seed=45)), str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"block_idx_with_mot_ref = \[0, 2\].*blocks at \[0, 4\]"):
        load_vap_dit(tmp_path)


def test_a_missing_reference_tensor_is_named():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=46)
    del state["mot.blocks.4.cross_attn.k_img.weight"]
    with pytest.raises(ModelLoadError, match=r"missing \(1\).*mot\.blocks\.4\.cross_attn\.k_img\.weight"):
        load_vap_dit(state, config=cfg)


def test_a_video_as_prompt_file_is_described_as_one_to_other_loaders():
    from wanflow.models.signature import architecture_mismatch, identify

    from .test_vap_parity import seeded_state, tiny_config

    ours = seeded_state(tiny_config(), 0)
    for state in (ours, vap_keys.to_diffusers(ours)):
        found = identify(state)
        assert found.variant == "video-as-prompt" and "Video-As-Prompt" in found.describe()
        assert architecture_mismatch("video-as-prompt-wan2.1-14b", found) is None
        assert "looks like a Video-As-Prompt" in architecture_mismatch("wan2.1-i2v-14b", found)
