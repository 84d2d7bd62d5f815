"""Every model loader takes a state dict as well as a file, and both give the same model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from wanflow.errors import ModelLoadError
from wanflow.models.dit_keys import OFFICIAL_TO_DIFFUSERS
from wanflow.models.dit_loader import load_dit
from wanflow.models.image_encoder import ImageEncoder
from wanflow.models.loading import rename_keys
from wanflow.models.text_encoder import TextEncoder
from wanflow.models.vae.loader import load_vae

from ._checkpoints import clip_official_state, make_tokenizer_dir, umt5_official_state
from ._dit_fixtures import random_state, tiny_config, write_checkpoint
from .vae._fixtures import TINY, random_vae


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) > 4
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_dit_from_a_state_dict_equals_the_dit_from_its_file(tmp_path):
    cfg = tiny_config("i2v")
    state = random_state(cfg, seed=3)
    path = write_checkpoint(tmp_path, cfg, state)
    from_file = load_dit(path, cfg, dtype=torch.bfloat16)
    from_dict = load_dit(state, cfg, dtype=torch.bfloat16)
    assert_same_weights(from_file, from_dict)
    x, t = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0])
    context, clip, y = torch.randn(1, 8, 4096), torch.randn(1, 257, 1280), torch.randn(1, 20, 1, 4, 4)
    assert torch.equal(from_file(x, t, context, clip, y), from_dict(x, t, context, clip, y))


def test_dit_state_dict_in_diffusers_layout_without_config(tmp_path):
    cfg = tiny_config("t2v", num_heads=1)  # head_dim 128: what a config read off shapes assumes
    state = random_state(cfg, seed=4)
    model = load_dit(rename_keys(state, OFFICIAL_TO_DIFFUSERS))
    assert model.cfg == cfg
    assert_same_weights(model, load_dit(write_checkpoint(tmp_path, cfg, state)))


def test_the_callers_dict_is_not_changed_by_the_model():
    cfg = tiny_config("t2v")
    state = random_state(cfg)
    model = load_dit(state, cfg, dtype=torch.float32)  # same dtype, same device: still a copy
    with torch.no_grad():
        model.blocks[0].self_attn.q.weight.zero_()
    assert state["blocks.0.self_attn.q.weight"].abs().sum() > 0


def test_a_dict_that_is_not_a_state_dict_is_refused():
    state = {**random_state(tiny_config("t2v")), "step": 1000}
    with pytest.raises(ModelLoadError, match=r"the state dict passed in .*entries step are not tensors"):
        load_dit(state)


def test_vae_from_a_state_dict_equals_the_vae_from_its_file(tmp_path):
    state = random_vae(TINY["wan2.2"], seed=5).state_dict()
    save_file(state, str(tmp_path / "vae.safetensors"))
    from_file = load_vae(tmp_path / "vae.safetensors", "wan2.2", torch.bfloat16)
    from_dict = load_vae(state, "wan2.2", torch.bfloat16)
    assert from_dict.config == TINY["wan2.2"]  # widths read off the dict's tensors
    assert_same_weights(from_file, from_dict)


def test_text_encoder_from_a_state_dict_equals_the_one_from_its_file(tmp_path):
    state = umt5_official_state(seed=6, dtype=torch.bfloat16)
    torch.save(state, tmp_path / "umt5.pth")
    tokenizer = make_tokenizer_dir(tmp_path / "tok")
    from_file = TextEncoder.from_checkpoint(tmp_path / "umt5.pth", tokenizer, dtype=torch.float32)
    from_dict = TextEncoder.from_checkpoint(state, tokenizer, dtype=torch.float32)
    assert_same_weights(from_file.model, from_dict.model)
    prompt = ["A cat sits on a red sofa."]
    assert torch.equal(from_file.encode(prompt).embeddings, from_dict.encode(prompt).embeddings)


def test_image_encoder_from_a_state_dict_equals_the_one_from_its_file(tmp_path):
    state = clip_official_state(seed=7)
    torch.save(state, tmp_path / "clip.pth")
    from_file = ImageEncoder.from_checkpoint(tmp_path / "clip.pth", dtype=torch.float32)
    from_dict = ImageEncoder.from_checkpoint(state, dtype=torch.float32)
    assert_same_weights(from_file.model, from_dict.model)
    image = torch.rand(1, 3, 40, 40) * 2 - 1
    assert torch.equal(from_file.encode(image), from_dict.encode(image))
