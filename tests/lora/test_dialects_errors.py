"""Files that are not LoRAs, or LoRAs with keys wanflow cannot place: clear errors, nothing silent."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.lora import _dialects_fixtures as fx
from tests.models._dit_fixtures import random_state, tiny_config
from wanflow.errors import ModelLoadError
from wanflow.lora.read import read_lora


def test_detection_never_uses_the_file_name(tmp_path):
    """A diffusers LoRA named like a musubi one, with a .pt suffix, is still read as diffusers."""
    made = fx.diffusers()
    path = tmp_path / "lora_unet_musubi_style.pt"
    save_file(made.state, str(path))
    lora = read_lora(path)
    assert lora.dialect == "diffusers"
    assert sorted(lora.deltas) == sorted(made.expected)


def test_a_weights_only_pickle_is_read(tmp_path):
    """A pickle is read with torch.load(weights_only=True), its ``state_dict`` wrapper unwrapped
    (Wan2.2-Animate's relighting_lora.ckpt)."""
    made = fx.musubi()
    path = tmp_path / "relighting.bin"
    torch.save({"state_dict": made.state}, path)
    lora = read_lora(path)
    assert lora.dialect == "musubi"
    assert sorted(lora.deltas) == sorted(made.expected)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "lora.ckpt"
    torch.save({"state_dict": fx.musubi().state, "config": _Opaque()}, path)
    with pytest.raises(ModelLoadError, match=r"lora\.ckpt: refused: this file needs to run pickled Python code"):
        read_lora(path)


class _Opaque:
    """An object only a full unpickler (one that runs code) can rebuild."""


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file(fx.musubi().state, str(path))
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match="cut.safetensors: truncated safetensors file"):
        read_lora(path)


def test_a_dit_checkpoint_is_not_a_lora_and_the_error_says_what_it_is(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(random_state(tiny_config("t2v")), str(path))
    with pytest.raises(ModelLoadError, match=r"no LoRA delta could be read.*It looks like a Wan T2V DiT"):
        read_lora(path)


@pytest.mark.parametrize(("content", "says"), [
    (b"", "an empty file"),
    (b'{"weight_map": {}}', "JSON"),
])
def test_other_files_are_named_for_what_they_are(tmp_path, content, says):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=f"not a LoRA: it is .*{says}"):
        read_lora(path)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="no such LoRA file"):
        read_lora(tmp_path / "absent.safetensors")
    with pytest.raises(ModelLoadError, match="is a folder"):
        read_lora(tmp_path)


def test_an_empty_state_dict_is_not_a_lora():
    with pytest.raises(ModelLoadError, match="holds no tensors"):
        read_lora({})


def test_unreadable_keys_are_listed_with_their_reason():
    made = fx.diffusion_pipe()
    state = dict(made.state)
    state["diffusion_model.blocks.0.self_attn.q.dora_scale"] = torch.ones(fx.CFG.dim, 1)
    state["lora_unet_vace_blocks_0_self_attn_q.lora_down.weight"] = torch.ones(4, fx.CFG.dim)
    lone = state.pop("diffusion_model.blocks.1.ffn.0.lora_B.weight")  # its lora_A stays alone
    state["diffusion_model.blocks.0.cross_attn.q.alpha"] = torch.tensor([1.0, 2.0])
    lora = read_lora(state)
    assert lone is not None
    assert lora.reasons == {
        "diffusion_model.blocks.0.self_attn.q.dora_scale": "DoRA (weight-decomposed LoRA) is not supported",
        "lora_unet_vace_blocks_0_self_attn_q.lora_down.weight":
            "'vace_blocks_0_self_attn_q' is not a module of the Wan DiT wanflow knows",
        "diffusion_model.blocks.1.ffn.0.lora_A.weight": "incomplete or ill-fitting factors (found only down)",
        "diffusion_model.blocks.0.cross_attn.q.alpha": "an alpha of shape (2,) (expected one number)",
    }
    assert lora.unread == tuple(sorted(lora.reasons))
    assert "blocks.1.ffn.0.weight" not in lora.deltas
    assert len(lora.deltas) == len(made.expected) - 1
    assert lora.deltas["blocks.0.cross_attn.q.weight"].alpha is None  # the bad alpha is not used


def test_factors_that_do_not_multiply_are_unread():
    state = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.ones(4, 128),
             "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.ones(128, 8),
             "diffusion_model.blocks.0.self_attn.k.lora_A.weight": torch.ones(4, 128),
             "diffusion_model.blocks.0.self_attn.k.lora_B.weight": torch.ones(128, 4)}
    lora = read_lora(state)
    assert list(lora.deltas) == ["blocks.0.self_attn.k.weight"]
    assert "do not multiply" in lora.reasons["diffusion_model.blocks.0.self_attn.q.lora_A.weight"]


def test_a_file_mixing_dialects_is_read_key_by_key():
    musubi, comfy = fx.musubi(alpha=2.0), fx.diffusion_pipe()
    state = {k: v for k, v in musubi.state.items() if "blocks_0_" in k}
    state |= {k: v for k, v in comfy.state.items() if ".blocks.1." in k}
    lora = read_lora(state)
    assert lora.dialect == "comfyui+musubi"
    assert lora.unread == ()
    for param, delta in lora.deltas.items():
        source = musubi if param.startswith("blocks.0.") else comfy
        torch.testing.assert_close(delta.tensor(), source.expected[param], rtol=1e-6, atol=1e-8)
    assert len(lora.deltas) == 2 * 12


def test_two_dialects_naming_one_module_are_both_unread():
    """Which pair is meant cannot be known: neither is applied, both are reported."""
    musubi, peft = fx.musubi(), fx.raw_peft()
    clash = {k: v for k, v in musubi.state.items() if k.startswith("lora_unet_blocks_0_self_attn_q.")}
    state = dict(peft.state) | clash
    lora = read_lora(state)
    assert "blocks.0.self_attn.q.weight" not in lora.deltas
    assert len(lora.deltas) == len(peft.expected) - 1
    assert sorted(lora.unread) == sorted([*clash, "base_model.model.blocks.0.self_attn.q.lora_A.weight",
                                          "base_model.model.blocks.0.self_attn.q.lora_B.weight"])
    assert "two dialects for one module" in lora.reasons["lora_unet_blocks_0_self_attn_q.alpha"]


def test_a_second_delta_for_one_parameter_is_unread():
    state = {"diffusion_model.head.head.lora_down.weight": torch.ones(4, 128),
             "diffusion_model.head.head.lora_up.weight": torch.ones(64, 4),
             "diffusion_model.head.head.diff": torch.ones(64, 128)}
    lora = read_lora(state)
    assert isinstance(lora.deltas["head.head.weight"].up, torch.Tensor)
    assert lora.reasons == {"diffusion_model.head.head.diff": "a second delta for head.head.weight in the same module"}


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_a_non_finite_alpha_is_unread_not_used(alpha):
    state = {"lora_unet_blocks_0_ffn_0.lora_down.weight": torch.ones(4, 128),
             "lora_unet_blocks_0_ffn_0.lora_up.weight": torch.ones(256, 4),
             "lora_unet_blocks_0_ffn_0.alpha": torch.tensor(alpha)}
    lora = read_lora(state)
    assert lora.reasons == {"lora_unet_blocks_0_ffn_0.alpha": f"alpha = {alpha} is not finite"}
    assert lora.deltas["blocks.0.ffn.0.weight"].scale == 1.0


def test_one_factor_spelled_twice_in_one_module_is_unread():
    state = {"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.ones(4, 128),
             "diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.ones(4, 128),
             "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.ones(256, 4),
             "diffusion_model.blocks.0.ffn.2.lora_A.weight": torch.ones(4, 256),
             "diffusion_model.blocks.0.ffn.2.lora_B.weight": torch.ones(128, 4)}
    lora = read_lora(state)
    assert list(lora.deltas) == ["blocks.0.ffn.2.weight"]
    assert lora.reasons["diffusion_model.blocks.0.ffn.0.lora_down.weight"] == (
        "diffusion_model.blocks.0.ffn.0.lora_A.weight and diffusion_model.blocks.0.ffn.0.lora_down.weight "
        "are the same factor")
    assert len(lora.unread) == 3  # the pair's partner cannot be used alone either


def test_low_rank_and_lycoris_factors_on_one_module_are_unread():
    stem = "lora_unet_blocks_0_self_attn_k"
    state = {f"{stem}.lora_down.weight": torch.ones(2, 128), f"{stem}.lora_up.weight": torch.ones(128, 2),
             f"{stem}.hada_w1_a": torch.ones(128, 2), f"{stem}.hada_w1_b": torch.ones(2, 128),
             f"{stem}.hada_w2_a": torch.ones(128, 2), f"{stem}.hada_w2_b": torch.ones(2, 128),
             f"{stem}.alpha": torch.tensor(1.0), f"{stem}.diff_b": torch.ones(128)}
    lora = read_lora(state)
    assert list(lora.deltas) == ["blocks.0.self_attn.k.bias"]
    assert set(lora.reasons.values()) == {"one module with lowrank and loha factors at once"}
    assert len(lora.unread) == 7


def test_a_peft_bias_without_its_pair_is_unread():
    state = {"transformer.blocks.0.attn1.to_q.lora_B.bias": torch.ones(128),
             "transformer.blocks.0.attn1.to_k.lora_A.weight": torch.ones(2, 128),
             "transformer.blocks.0.attn1.to_k.lora_B.weight": torch.ones(128, 2)}
    lora = read_lora(state)
    assert list(lora.deltas) == ["blocks.0.self_attn.k.weight"]
    assert lora.reasons == {"transformer.blocks.0.attn1.to_q.lora_B.bias": "a lora_B bias without its lora_A/lora_B pair"}
