"""Loading the DiT from every layout it ships in, and refusing files that do not fit."""

from __future__ import annotations

import json

import attrs
import pytest
import torch

from wanflow.errors import ModelLoadError
from wanflow.models.dit_keys import DIFFUSERS_TO_OFFICIAL, OFFICIAL_TO_DIFFUSERS
from wanflow.models.dit_loader import load_dit
from wanflow.models.loading import rename_keys

from ._dit_fixtures import inputs, random_state, tiny_config, write_checkpoint


def _forward(model, cfg, seed=2):
    with torch.no_grad():
        return model(**inputs(cfg, seed=seed))


@pytest.fixture(scope="module")
def flf2v():
    """FLF2V exercises every key table entry (img_emb, emb_pos, k_img, norm3)."""
    cfg = tiny_config("flf2v")
    return cfg, random_state(cfg, seed=11)


def test_key_tables_are_inverse_and_cover_every_key(flf2v):
    cfg, state = flf2v
    diff = rename_keys(state, OFFICIAL_TO_DIFFUSERS)
    assert not set(diff) & set(state) - {"patch_embedding.weight", "patch_embedding.bias"}
    assert diff["blocks.1.norm2.weight"] is state["blocks.1.norm3.weight"]  # the swap
    assert diff["condition_embedder.image_embedder.pos_embed"] is state["img_emb.emb_pos"]
    assert rename_keys(diff, DIFFUSERS_TO_OFFICIAL) == state


@pytest.mark.parametrize("layout", ["diffusers", "comfyui"])
def test_other_layouts_give_the_official_outputs(tmp_path, flf2v, layout):
    cfg, state = flf2v
    official = load_dit(write_checkpoint(tmp_path / "official", cfg, state))
    other_path = write_checkpoint(tmp_path / layout, cfg, state, layout=layout)
    other = load_dit(other_path)
    assert other.cfg == cfg
    assert torch.equal(_forward(official, cfg), _forward(other, cfg))


def test_comfyui_single_file_without_config_reads_shapes(tmp_path):
    cfg = tiny_config("i2v-a14b", dim=256, num_heads=2)  # head_dim 128 as every release
    state = random_state(cfg, seed=12)
    path = write_checkpoint(tmp_path, cfg, state, layout="comfyui", config=False)
    model = load_dit(path)
    assert model.cfg == cfg
    assert torch.equal(model.blocks[1].cross_attn.v.weight, state["blocks.1.cross_attn.v.weight"])


@pytest.mark.parametrize("how", ["index", "folder", "list"])
def test_sharded_checkpoint_loads(tmp_path, how):
    cfg = tiny_config("t2v")
    state = random_state(cfg, seed=13)
    index = write_checkpoint(tmp_path, cfg, state, shards=3)
    shards = sorted(tmp_path.glob("*-of-00003.safetensors"))
    assert len(shards) == 3
    target = {"index": index, "folder": tmp_path, "list": shards}[how]
    model = load_dit(target)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_config_dim_differs_from_weights(tmp_path):
    big = tiny_config("t2v", dim=256, num_heads=2)
    path = write_checkpoint(tmp_path, big, random_state(big))
    small = official_json(tiny_config("t2v"))
    (tmp_path / "config.json").write_text(json.dumps(small))
    with pytest.raises(ModelLoadError) as err:
        load_dit(path)
    msg = str(err.value)
    assert str(path) in msg and "dim 128" in msg and "mis-shaped" in msg
    assert "(256, 16, 1, 2, 2)" in msg  # what the file holds


def test_i2v_config_with_t2v_weights(tmp_path):
    t2v = tiny_config("t2v")
    path = write_checkpoint(tmp_path, t2v, random_state(t2v))
    (tmp_path / "config.json").write_text(json.dumps(official_json(tiny_config("i2v"))))
    with pytest.raises(ModelLoadError, match="I2V DiT") as err:
        load_dit(path)
    assert str(path) in str(err.value) and "T2V" in str(err.value)  # what it looks like


def test_explicit_config_overrides_and_is_checked(tmp_path):
    cfg = tiny_config("ti2v")
    path = write_checkpoint(tmp_path, cfg, random_state(cfg), config=False)
    with pytest.raises(ModelLoadError, match=str(path)):
        load_dit(path, attrs.evolve(cfg, num_layers=3))
    assert load_dit(path, cfg).cfg == cfg


def test_a_vae_is_not_a_dit(tmp_path):
    from safetensors.torch import save_file

    vae = {
        "encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3),
        "decoder.conv1.weight": torch.zeros(384, 16, 3, 3, 3),
    }
    path = tmp_path / "vae.safetensors"
    save_file(vae, str(path))
    with pytest.raises(ModelLoadError, match="expected a Wan DiT checkpoint") as err:
        load_dit(path)
    assert str(path) in str(err.value)


def test_unknown_config_keys_are_refused(tmp_path):
    cfg = tiny_config("t2v")
    path = write_checkpoint(tmp_path, cfg, random_state(cfg))
    (tmp_path / "config.json").write_text(json.dumps({**official_json(cfg), "pose_patch_embedding": [0]}))
    with pytest.raises(ModelLoadError, match=r"config.json: config keys \['pose_patch_embedding'\]"):
        load_dit(path)


def test_vace_layers_in_a_config_beside_plain_weights_are_refused(tmp_path):
    cfg = tiny_config("t2v")
    path = write_checkpoint(tmp_path, cfg, random_state(cfg))
    (tmp_path / "config.json").write_text(json.dumps({**official_json(cfg), "vace_layers": [0]}))
    with pytest.raises(ModelLoadError, match="config names VACE layers, but the weights hold no VACE blocks"):
        load_dit(path)


def test_bf16_load_keeps_fp32_islands(tmp_path):
    cfg = tiny_config("t2v")
    model = load_dit(write_checkpoint(tmp_path, cfg, random_state(cfg)), dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["time_embedding.0.weight"] == dtypes["head.head.weight"] == torch.float32
    assert dtypes["blocks.0.modulation"] == dtypes["time_projection.1.weight"] == torch.float32
    assert dtypes["blocks.0.self_attn.q.weight"] == dtypes["text_embedding.0.weight"] == torch.bfloat16


def official_json(cfg):
    from ._dit_fixtures import official_config_json

    return official_config_json(cfg)
