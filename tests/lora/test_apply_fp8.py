"""LoRAs on fp8-stored weights: a merge is refused (it would vanish in fp8's rounding), low-rank
factors apply on the fly, and deltas that would have to be materialised into fp8 are refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.models._dit_fixtures import random_state, tiny_config
from wanflow.errors import ModelInputError
from wanflow.lora import attach, merge
from wanflow.lora.delta import Full, LoraFile, LowRank
from wanflow.models.dit_loader import load_dit


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    cfg = tiny_config("t2v")
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    save_file(random_state(cfg, seed=3), str(path))
    return cfg, path


def load(path, storage):
    return load_dit([path], dtype=torch.float32, storage=storage).eval()


def low_rank(cfg) -> LoraFile:
    g = torch.Generator().manual_seed(1)
    return LoraFile("test", {"blocks.0.self_attn.q.weight": LowRank(
        torch.randn(4, cfg.dim, generator=g), torch.randn(cfg.dim, 4, generator=g))})


def test_a_merge_into_fp8_weights_is_refused(fp8_model):
    cfg, path = fp8_model
    model = load(path, "fp8")
    assert model.blocks[0].self_attn.q.weight.dtype.itemsize == 1
    with pytest.raises(ModelInputError, match="fp8"):
        merge(model, [low_rank(cfg)], [1.0])


def test_low_rank_factors_apply_on_the_fly_to_fp8_weights(fp8_model):
    cfg, path = fp8_model
    model = load(path, "fp8")
    before = model.blocks[0].self_attn.q.weight.clone()
    x = torch.randn(1, 5, cfg.dim)
    plain = model.blocks[0].self_attn.q(x)
    with attach(model, [low_rank(cfg)], [0.5]):
        patched = model.blocks[0].self_attn.q(x)
    delta = low_rank(cfg).deltas["blocks.0.self_attn.q.weight"].tensor() * 0.5
    torch.testing.assert_close(patched - plain, x @ delta.T, rtol=1e-4, atol=1e-4)
    assert torch.equal(model.blocks[0].self_attn.q.weight, before)


def test_a_full_delta_on_an_fp8_weight_is_refused(fp8_model):
    cfg, path = fp8_model
    model = load(path, "fp8")
    full = LoraFile("test", {"blocks.0.self_attn.q.weight": Full(torch.zeros(cfg.dim, cfg.dim))})
    with pytest.raises(ModelInputError, match="only low-rank"):
        attach(model, [full], [1.0])
