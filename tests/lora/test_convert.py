"""Writing every dialect: round trips are bit-exact, refusals name the dialect that can hold the delta,
and the header says what the file is."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.lora import _dialects_fixtures as fx
from wanflow.lora.delta import Full, LoraFile, LowRank
from wanflow.lora.dialects import WRITABLE, LoraFormatError
from wanflow.lora.read import read_lora
from wanflow.lora.write import write_lora

#: hand-made source -> the dialects that can hold all of it (the others must refuse).
HOLDS = {
    "diffsynth": set(WRITABLE), "peft": set(WRITABLE), "diffusion-pipe": set(WRITABLE),
    "musubi": set(WRITABLE), "videox-fun": set(WRITABLE),
    "diffusers": {"diffusers", "comfyui"},  # a PEFT lora_B bias
    "diffusers-metadata": {"comfyui"},  # a lora_B bias at scale 2: PEFT would scale it again
    "lightx2v": {"comfyui"},  # full deltas of norms, modulation, biases
    "lycoris": {"comfyui", "musubi"},  # LoHa and LoKr
}


def assert_same_deltas(a: LoraFile, b: LoraFile) -> None:
    """Identical parameter sets and bit-identical ΔW."""
    assert sorted(a.deltas) == sorted(b.deltas)
    for param in a.deltas:
        assert torch.equal(a.deltas[param].tensor(), b.deltas[param].tensor()), param


def test_holds_covers_every_source_and_every_dialect_is_tested():
    assert set(HOLDS) == set(fx.ALL)
    assert WRITABLE == ("diffsynth", "comfyui", "diffusers", "musubi", "longcat")


@pytest.mark.parametrize("source", sorted(fx.ALL))
@pytest.mark.parametrize("target", WRITABLE)
def test_round_trip_through_every_dialect_is_exact(tmp_path, source, target):
    made = fx.ALL[source]()
    original = read_lora(made.state, metadata=made.metadata)
    path = tmp_path / "out.safetensors"
    if target not in HOLDS[source]:
        with pytest.raises(LoraFormatError, match=f"as {target}: .* do not fit that dialect.*use --format comfyui"):
            write_lora(original, path, target)
        assert not path.exists()
        return
    write_lora(original, path, target)
    again = read_lora(path)
    assert again.dialect == target
    assert again.unread == ()
    assert_same_deltas(original, again)


@pytest.mark.parametrize("alpha", [0.7, 3.0, 1e-3])
def test_a_chain_through_all_four_dialects_keeps_every_bit(tmp_path, alpha):
    """alpha is never folded into the factors (that would round): it travels beside them."""
    original = read_lora(fx.musubi(alpha=alpha).state)
    lora = original
    for i, target in enumerate(("diffusers", "diffsynth", "comfyui", "musubi", "diffusers")):
        write_lora(lora, tmp_path / f"{i}.safetensors", target)
        lora = read_lora(tmp_path / f"{i}.safetensors")
        assert_same_deltas(original, lora)
        one = lora.deltas["blocks.0.self_attn.q.weight"]
        assert torch.equal(one.down, original.deltas["blocks.0.self_attn.q.weight"].down)


@pytest.mark.parametrize("target", WRITABLE)
def test_bf16_factors_keep_their_dtype_and_bits(tmp_path, target):
    f = fx.factors(dtype=torch.bfloat16)
    lora = LoraFile("test", {m + ".weight": LowRank(f.down[m], f.up[m], 2.0) for m in fx.modules()})
    write_lora(lora, tmp_path / "bf16.safetensors", target)
    again = read_lora(tmp_path / "bf16.safetensors")
    for param, delta in lora.deltas.items():
        assert again.deltas[param].down.dtype == torch.bfloat16
        assert torch.equal(again.deltas[param].up, delta.up)
    assert_same_deltas(lora, again)


def test_written_keys_are_each_dialects_own(tmp_path):
    lora = read_lora(fx.musubi(alpha=2.0).state)
    expected = {
        "diffsynth": ["blocks.0.cross_attn.k_img.alpha", "blocks.0.cross_attn.k_img.lora_A.default.weight",
                      "blocks.0.cross_attn.k_img.lora_B.default.weight"],
        "comfyui": ["diffusion_model.blocks.0.cross_attn.k_img.alpha",
                    "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight",
                    "diffusion_model.blocks.0.cross_attn.k_img.lora_B.weight"],
        "diffusers": ["transformer.blocks.0.attn2.add_k_proj.lora_A.weight",
                      "transformer.blocks.0.attn2.add_k_proj.lora_B.weight"],
        "musubi": ["lora_unet_blocks_0_cross_attn_k_img.alpha", "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight",
                   "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight"],
    }
    for dialect, keys in expected.items():
        path = write_lora(lora, tmp_path / f"{dialect}.safetensors", dialect)
        with safe_open(str(path), "pt") as f:
            written = sorted(f.keys())
        assert [k for k in written if "blocks.0.cross_attn.k_img" in k or "blocks_0_cross_attn_k_img" in k
                or "blocks.0.attn2.add_k_proj" in k] == keys
        assert len(written) == len(keys) * len(fx.modules())


def test_musubi_always_writes_alpha_and_alpha_equal_rank_means_scale_one(tmp_path):
    lora = read_lora(fx.diffusion_pipe().state)  # no alpha anywhere
    path = write_lora(lora, tmp_path / "m.safetensors", "musubi")
    with safe_open(str(path), "pt") as f:
        alpha = f.get_tensor("lora_unet_head_head.alpha")
    assert alpha.item() == fx.RANK and alpha.dtype == torch.float32  # what trainers write
    assert read_lora(path).deltas["head.head.weight"].scale == 1.0


def test_diffusers_keeps_alpha_in_peft_metadata(tmp_path):
    f = fx.factors()
    deltas = {m + ".weight": LowRank(f.down[m], f.up[m], 8.0) for m in fx.modules()}
    deltas["blocks.1.ffn.0.weight"] = LowRank(f.down["blocks.1.ffn.0"], f.up["blocks.1.ffn.0"], 0.5)
    path = write_lora(LoraFile("test", deltas), tmp_path / "d.safetensors", "diffusers")
    with safe_open(str(path), "pt") as fh:
        config = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert config["transformer.lora_alpha"] == 8.0 and config["transformer.r"] == fx.RANK
    assert config["transformer.alpha_pattern"] == {r"^blocks\.1\.ffn\.net\.0\.proj": 0.5}
    assert len(config["transformer.target_modules"]) == len(fx.modules())


def test_the_header_says_dialect_rank_alpha_base_model_and_recipe(tmp_path):
    made = fx.musubi(alpha=2.0)
    lora = read_lora(made.state, metadata={"ss_network_dim": "4", "wanflow.dialect": "stale",
                                           "lora_adapter_metadata": "{}"})
    path = write_lora(lora, tmp_path / "h.safetensors", "comfyui", recipe_digest="abc123",
                      metadata={"note": "hello"})
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    assert header["wanflow.dialect"] == "comfyui"
    assert header["wanflow.rank"] == "4"
    assert header["wanflow.alpha"] == "2"
    assert header["wanflow.recipe_digest"] == "abc123"
    assert header["wanflow.base_model"].startswith("a Wan DiT (width 128, image cross-attention)")
    assert header["ss_network_dim"] == "4" and header["note"] == "hello" and header["format"] == "pt"
    assert "lora_adapter_metadata" not in header  # it describes diffusers names only


def test_base_model_can_be_given(tmp_path):
    lora = read_lora(fx.musubi().state)
    path = write_lora(lora, tmp_path / "b.safetensors", "musubi", base_model="Wan2.1-I2V-14B-480P")
    assert read_lora(path).metadata["wanflow.base_model"] == "Wan2.1-I2V-14B-480P"


def test_refusals_list_the_deltas_and_the_dialect_to_use(tmp_path):
    lora = read_lora(fx.lightx2v().state)
    with pytest.raises(LoraFormatError) as err:
        write_lora(lora, tmp_path / "x.safetensors", "musubi")
    message = str(err.value)
    assert "8 of the LoRA's deltas do not fit that dialect" in message
    assert "blocks.0.modulation (a full delta)" in message
    assert "musubi/kohya names hold no full deltas; use --format comfyui" in message


def test_diffusers_refuses_a_bias_without_its_pair(tmp_path):
    lora = LoraFile("test", {"blocks.0.ffn.2.bias": Full(torch.ones(128))})
    with pytest.raises(LoraFormatError, match=r"blocks\.0\.ffn\.2\.bias \(a bias delta needs a low-rank pair"):
        write_lora(lora, tmp_path / "x.safetensors", "diffusers")


def test_musubi_refuses_modules_it_cannot_spell(tmp_path):
    lora = LoraFile("test", {"vace_blocks.0.self_attn.q.weight": LowRank(torch.ones(2, 8), torch.ones(8, 2))})
    with pytest.raises(LoraFormatError, match="kohya-style names cannot spell the module vace_blocks.0.self_attn.q"):
        write_lora(lora, tmp_path / "x.safetensors", "musubi")
    write_lora(lora, tmp_path / "x.safetensors", "comfyui")  # dotted names can
    assert list(read_lora(tmp_path / "x.safetensors").deltas) == ["vace_blocks.0.self_attn.q.weight"]


def test_an_unknown_dialect_is_refused(tmp_path):
    with pytest.raises(LoraFormatError, match=r"no LoRA dialect 'kohya' to write; choose one of"):
        write_lora(read_lora(fx.musubi().state), tmp_path / "x.safetensors", "kohya")


def test_writing_over_the_file_being_read_is_safe(tmp_path):
    path = tmp_path / "same.safetensors"
    save_file(fx.musubi(alpha=2.0).state, str(path))
    lora = read_lora(path)  # its factors are views of the mapped file
    before = {p: d.tensor() for p, d in lora.deltas.items()}
    write_lora(lora, path, "comfyui")
    after = read_lora(path)
    assert after.dialect == "comfyui"
    for param, delta in before.items():
        assert torch.equal(after.deltas[param].tensor(), delta)


@pytest.mark.parametrize("target", WRITABLE)
def test_an_alpha_fp32_cannot_hold_is_kept_exactly(tmp_path, target):
    f = fx.factors()
    m = "blocks.0.self_attn.q"
    lora = LoraFile("test", {m + ".weight": LowRank(f.down[m], f.up[m], 0.1)})
    again = read_lora(write_lora(lora, tmp_path / "a.safetensors", target))
    assert again.deltas[m + ".weight"].alpha == 0.1
    assert_same_deltas(lora, again)
