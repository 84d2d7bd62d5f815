"""kohya/musubi underscored names come back to the official dotted ones, for every module."""

from __future__ import annotations

import pytest

from tests.models._dit_fixtures import tiny_config
from wanflow.lora.describe import module_of
from wanflow.lora.dialects import parse_key
from wanflow.lora.names import dotted_module, official_module
from wanflow.models.dit import WanDiT
from wanflow.models.loading import build_on_meta


@pytest.mark.parametrize("variant", ["i2v", "flf2v", "ti2v"])
def test_every_module_survives_underscores(variant):
    names = build_on_meta(lambda: WanDiT(tiny_config(variant))).state_dict()
    found = {module_of(p) for p in names}
    assert len(found) >= 40  # 2 blocks × 17+ modules, plus the top-level ones
    for module in found:
        assert dotted_module(module.replace(".", "_")) == module, module


@pytest.mark.parametrize(("underscored", "official"), [
    ("blocks_3_cross_attn_k_img", "blocks.3.cross_attn.k_img"),
    ("blocks_3_cross_attn_norm_k_img", "blocks.3.cross_attn.norm_k_img"),
    ("blocks_12_ffn_0", "blocks.12.ffn.0"),
    ("time_projection_1", "time_projection.1"),
    ("text_embedding_0", "text_embedding.0"),
    ("head_head", "head.head"),
    ("img_emb_proj_1", "img_emb.proj.1"),
    ("blocks_0_attn1_to_out_0", "blocks.0.self_attn.o"),  # diffusers names, underscored
    ("blocks_0_attn2_add_v_proj", "blocks.0.cross_attn.v_img"),
    ("condition_embedder_time_proj", "time_projection.1"),
    ("blocks_5", "blocks.5"),  # lightx2v's diff_m sits on the block itself
])
def test_underscored_names(underscored, official):
    assert dotted_module(underscored) == official


def test_unknown_underscored_modules_are_not_guessed():
    assert dotted_module("vace_blocks_0_self_attn_q") is None
    assert dotted_module("blocks_0_self_attn_qq") is None


@pytest.mark.parametrize(("diffusers", "official"), [
    ("blocks.1.attn1.to_q", "blocks.1.self_attn.q"),
    ("blocks.1.attn2.to_out.0", "blocks.1.cross_attn.o"),
    ("blocks.1.attn2.add_k_proj", "blocks.1.cross_attn.k_img"),
    ("blocks.1.ffn.net.0.proj", "blocks.1.ffn.0"),
    ("blocks.1.norm2", "blocks.1.norm3"),
    ("blocks.1.scale_shift_table", "blocks.1.modulation"),
    ("proj_out", "head.head"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("blocks.1.self_attn.q", "blocks.1.self_attn.q"),  # official names pass unchanged
    ("vace_blocks.0.self_attn.q", "vace_blocks.0.self_attn.q"),
])
def test_dotted_names(diffusers, official):
    assert official_module(diffusers) == official


@pytest.mark.parametrize(("key", "dialect", "module", "role"), [
    ("blocks.0.self_attn.q.lora_A.default.weight", "diffsynth", "blocks.0.self_attn.q", "down"),
    ("pipe.dit.blocks.0.self_attn.q.lora_B.default.weight", "diffsynth", "blocks.0.self_attn.q", "up"),
    ("base_model.model.blocks.0.cross_attn.k.lora_A.weight", "peft", "blocks.0.cross_attn.k", "down"),
    ("transformer.blocks.0.attn2.add_k_proj.lora_B.bias", "diffusers", "blocks.0.cross_attn.k_img", "lora_bias"),
    ("blocks.0.attn1.to_q.lora_A.weight", "diffusers", "blocks.0.self_attn.q", "down"),
    ("diffusion_model.blocks.0.ffn.2.lora_up.weight", "comfyui", "blocks.0.ffn.2", "up"),
    ("diffusion_model.blocks.0.diff_m", "comfyui", "blocks.0", "diff_m"),
    ("lora_unet_blocks_0_self_attn_q.alpha", "musubi", "blocks.0.self_attn.q", "alpha"),
    ("lora_unet__blocks_0_self_attn_q.lora_down.weight", "videox-fun", "blocks.0.self_attn.q", "down"),
    ("lycoris_blocks_0_ffn_0.lokr_w2_a", "lycoris", "blocks.0.ffn.0", "lokr"),
])
def test_keys_parse_to_dialect_module_and_role(key, dialect, module, role):
    parsed = parse_key(key)
    assert (parsed.dialect, parsed.module, parsed.role) == (dialect, module, role)


@pytest.mark.parametrize(("key", "why"), [
    ("diffusion_model.blocks.0.self_attn.q.dora_scale", "DoRA"),
    ("lora_unet_blocks_0_self_attn_q.hada_t1", "Tucker"),
    ("lora_unet_vace_blocks_0_self_attn_q.lora_down.weight", "not a module"),
    ("blocks.0.self_attn.q.weight", "not a LoRA key"),
])
def test_keys_wanflow_cannot_read_say_why(key, why):
    assert why in parse_key(key)
