"""Loading Wan2.2-Animate DiTs: official, diffusers and ComfyUI layouts, shards, sizes from the
shapes, and clear errors for files that are not (complete) Animate checkpoints."""

from __future__ import annotations

import pytest
import torch

from wanflow.errors import ModelLoadError
from wanflow.models.animate import DIRECTION_KEY, AnimateExtras
from wanflow.models.animate_loader import load_animate_dit
from wanflow.models.dit_keys import COMFYUI_PREFIX

from ._animate_fixtures import (
    diffusers_layout,
    inputs,
    seeded_state,
    tiny_config,
    write_checkpoint,
)
from ._dit_fixtures import random_state


def velocity(model, inp: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"],
                     extras=AnimateExtras(pose=inp["pose"], face=inp["face"]))


@pytest.mark.parametrize("size", [16, 32])
def test_official_and_diffusers_files_give_the_same_model(tmp_path, size):
    cfg = tiny_config(size=size, widths=(8, 16, 16) if size == 16 else (4, 8, 16, 16))
    state = seeded_state(cfg, seed=1)
    official = load_animate_dit(write_checkpoint(tmp_path / "official", state))
    diffusers = load_animate_dit(write_checkpoint(tmp_path / "diffusers", diffusers_layout(cfg, state)))
    assert official.animate_config == diffusers.animate_config == cfg  # every size read off the shapes
    for name, tensor in official.state_dict().items():
        assert torch.equal(tensor, diffusers.state_dict()[name]), name
        assert torch.equal(tensor, state[name]), name
    inp = inputs(cfg, seed=2)
    assert torch.equal(velocity(official, inp), velocity(diffusers, inp))


def test_sharded_and_comfyui_files_load(tmp_path):
    cfg = tiny_config()
    state = seeded_state(cfg, seed=3)
    sharded = load_animate_dit(write_checkpoint(tmp_path / "shards", state, shards=3).parent)
    comfy = load_animate_dit(write_checkpoint(tmp_path / "comfy", {COMFYUI_PREFIX + k: v for k, v in state.items()}))
    for model in (sharded, comfy):
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_reduced_precision_keeps_the_direction_basis_and_kernels_in_fp32():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=4)
    model = load_animate_dit(state, dtype=torch.bfloat16)
    weights = model.state_dict()
    assert weights[DIRECTION_KEY].dtype == torch.float32
    assert torch.equal(weights[DIRECTION_KEY], state[DIRECTION_KEY])
    assert weights["motion_encoder.enc.net_app.convs.1.conv2.0.kernel"].dtype == torch.float32
    assert weights["face_adapter.fuser_blocks.0.linear1_kv.weight"].dtype == torch.bfloat16
    assert weights["head.head.weight"].dtype == torch.float32  # the DiT's own fp32 island


def test_a_plain_i2v_dit_is_refused_saying_what_it_is():
    cfg = tiny_config()
    plain = random_state(cfg.dit)  # the same DiT without the Animate parts
    with pytest.raises(ModelLoadError, match=r"not a Wan2\.2 Animate checkpoint.*Wan2\.1 I2V DiT"):
        load_animate_dit(plain)


def test_an_incomplete_checkpoint_names_the_missing_parts():
    cfg = tiny_config()
    state = {k: v for k, v in seeded_state(cfg).items() if not k.startswith("motion_encoder.")}
    with pytest.raises(ModelLoadError, match=r"incomplete.*but no motion_encoder tensors.*shard"):
        load_animate_dit(state)


def test_face_blocks_must_follow_every_fifth_block():
    cfg = tiny_config(num_layers=10)
    state = {k: v for k, v in seeded_state(cfg).items() if not k.startswith("face_adapter.fuser_blocks.1.")}
    with pytest.raises(ModelLoadError, match=r"holds 1 face blocks, but a DiT of 10 layers has one after every 5th"):
        load_animate_dit(state)


def test_a_missing_blur_kernel_is_reported_by_name():
    cfg = tiny_config()
    state = seeded_state(cfg)
    del state["motion_encoder.enc.net_app.convs.2.skip.0.kernel"]
    with pytest.raises(ModelLoadError, match=r"missing \(1\).*convs\.2\.skip\.0\.kernel"):
        load_animate_dit(state)
