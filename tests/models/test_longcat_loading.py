"""Loading the LongCat-Video DiT from a tiny checkpoint in the released ``dit/`` layout (config.json,
two safetensors shards, their index json), and refusing files that are not LongCat-Video's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.models._dit_fixtures import random_state, tiny_config, write_checkpoint
from tests.models.test_longcat_model import TINY, tiny, video
from wanflow.errors import ModelLoadError
from wanflow.models.longcat_loader import load_longcat_dit

#: The released dit/config.json's keys (constructor arguments), at the tiny sizes.
CONFIG = {
    "_class_name": "LongCatVideoTransformer3DModel", "_diffusers_version": "0.35.0",
    "in_channels": 16, "out_channels": 16, "hidden_size": 64, "depth": 2, "num_heads": 4,
    "caption_channels": 32, "mlp_ratio": 4, "adaln_tembed_dim": 24, "frequency_embedding_size": 16,
    "patch_size": [1, 2, 2], "enable_flashattn3": False, "enable_flashattn2": True,
    "enable_xformers": False, "enable_bsa": False,
    "bsa_params": {"sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]},
    "cp_split_hw": [1, 1], "text_tokens_zero_pad": True,
}


def released_layout(folder: Path, state: dict[str, torch.Tensor], **config) -> Path:
    """dit/: config.json, diffusion_pytorch_model-0000{1,2}-of-00002.safetensors and the index."""
    dit = folder / "dit"
    dit.mkdir(parents=True)
    (dit / "config.json").write_text(json.dumps(CONFIG | config))
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    keys = sorted(state)
    weight_map = {k: names[0] if k.startswith(("x_", "t_", "y_", "blocks.0.")) else names[1] for k in keys}
    for name in names:
        save_file({k: state[k].contiguous() for k in keys if weight_map[k] == name}, str(dit / name))
    size = sum(v.numel() * v.element_size() for v in state.values())
    (dit / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}))
    return dit


@torch.no_grad()
@pytest.mark.parametrize("entry", ["folder", "index"])
def test_the_released_layout_loads_and_computes_what_the_weights_say(tmp_path, entry):
    source = tiny(seed=11)
    dit = released_layout(tmp_path, source.state_dict())
    path = dit if entry == "folder" else dit / "diffusion_pytorch_model.safetensors.index.json"
    model = load_longcat_dit(path)
    assert model.cfg.depth == 2 and model.cfg.num_heads == 4 and model.cfg.ffn_dim == TINY["ffn_dim"]
    assert model.cfg.text_tokens_zero_pad
    x, context = video(frames=3)
    t = torch.tensor([420.0])
    assert torch.equal(model(x, t, context, torch.tensor([5]), cond_frames=1),
                       source(x, t, context, torch.tensor([5]), cond_frames=1))


@torch.no_grad()
def test_the_config_json_decides_the_text_padding(tmp_path):
    source = tiny(seed=12)
    model = load_longcat_dit(released_layout(tmp_path, source.state_dict(), text_tokens_zero_pad=False))
    assert not model.cfg.text_tokens_zero_pad
    x, context = video(tokens=20)
    lens = torch.tensor([6])
    assert float((model(x, torch.tensor([99.0]), context, lens)
                  - source(x, torch.tensor([99.0]), context, lens)).abs().max()) > 0.01


def test_a_state_dict_loads_without_a_config(tmp_path):
    source = tiny(seed=13)
    model = load_longcat_dit(source.state_dict())
    assert model.cfg.text_tokens_zero_pad and model.cfg.hidden_size == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))


def test_bf16_keeps_the_time_embedding_modulations_and_final_layer_in_fp32(tmp_path):
    model = load_longcat_dit(tiny(seed=14).state_dict(), dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.state_dict().items()}
    fp32 = sorted(n for n, d in dtypes.items() if d == torch.float32)
    assert fp32 == sorted(n for n in dtypes if n.startswith(("t_embedder.", "final_layer."))
                          or ".adaLN_modulation." in n or ".pre_crs_attn_norm." in n)
    assert len(fp32) == 4 + 4 + 2 * (2 + 2) and dtypes["blocks.0.attn.qkv.weight"] == torch.bfloat16
    x, context = video(frames=2)
    with torch.no_grad():
        out = model(x, torch.tensor([500.0]), context)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_a_wan_dit_is_refused_saying_what_it_is(tmp_path):
    cfg = tiny_config("t2v")
    path = write_checkpoint(tmp_path / "wan", cfg, random_state(cfg))
    with pytest.raises(ModelLoadError, match=r"expected a LongCat-Video DiT .* looks like a Wan T2V DiT"):
        load_longcat_dit(path)


def test_a_config_json_of_other_sizes_is_refused(tmp_path):
    dit = released_layout(tmp_path, tiny().state_dict(), hidden_size=128, mlp_ratio=8)
    with pytest.raises(ModelLoadError, match=r"hidden_size = 128 \(weights: 64\).*mlp_ratio = 8"):
        load_longcat_dit(dit)


def test_a_missing_tensor_is_named(tmp_path):
    state = tiny().state_dict()
    del state["blocks.1.cross_attn.kv_linear.bias"]
    with pytest.raises(ModelLoadError, match=r"missing \(1\): blocks\.1\.cross_attn\.kv_linear\.bias"):
        load_longcat_dit(released_layout(tmp_path, state))


def test_a_longcat_file_is_recognised_as_longcat_not_as_an_unknown_checkpoint(tmp_path):
    from wanflow.models.signature import identify
    from wanflow.steps.files import check_dit

    state = tiny().state_dict()
    found = identify(state)
    assert (found.kind, found.variant) == ("dit", "longcat-video")
    assert "LongCat-Video" in found.describe()
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    check_dit([path], "longcat-video", "dit")  # the family's own file passes
    with pytest.raises(ModelLoadError, match="looks like a LongCat-Video DiT"):
        check_dit([path], "wan2.1-t2v-1.3b", "dit")
