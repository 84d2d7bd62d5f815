"""DitConfig: released variants, parsing of official/diffusers config.json, refusals."""

from __future__ import annotations

import attrs
import pytest

from wanflow.errors import ModelLoadError
from wanflow.models import dit_config
from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import VARIANTS, DitConfig
from wanflow.models.loading import build_on_meta

from ._dit_fixtures import diffusers_config_json, official_config_json, tiny_config

#: (parameters, tensors) of each release, counted from the official classes on meta.
RELEASED_SIZES = {
    "wan2.1-t2v-1.3b": (1.419e9, 825),
    "wan2.1-t2v-14b": (14.288e9, 1095),
    "wan2.1-i2v-14b-480p": (16.395e9, 1303),
    "wan2.1-flf2v-14b-720p": (16.396e9, 1304),
    "wan2.2-i2v-a14b": (14.289e9, None),
    "wan2.2-ti2v-5b": (5.000e9, 825),
}


@pytest.mark.parametrize("name", sorted(RELEASED_SIZES))
def test_released_variants_have_the_official_sizes(name):
    model = build_on_meta(lambda: WanDiT(VARIANTS[name]))
    state = model.state_dict()
    params, tensors = RELEASED_SIZES[name]
    total = sum(t.numel() for t in state.values())
    assert abs(total - params) < 0.0005e9, total
    if tensors is not None:
        assert len(state) == tensors
    assert VARIANTS[name].head_dim == 128
    assert len(VARIANTS) == 8


@pytest.mark.parametrize("variant", ["t2v", "i2v", "flf2v", "ti2v", "i2v-a14b"])
def test_official_and_diffusers_config_json_round_trip(variant):
    cfg = tiny_config(variant)
    clip = cfg.clip if cfg.model_type == "i2v" else None
    assert dit_config.from_official(official_config_json(cfg), "c.json", clip=clip) == cfg
    assert dit_config.from_diffusers(diffusers_config_json(cfg), "c.json") == cfg


def test_official_ti2v_config_json_parses_to_the_constant():
    doc = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": 3072, "eps": 1e-06,
           "ffn_dim": 14336, "freq_dim": 256, "in_dim": 48, "model_type": "ti2v", "num_heads": 24,
           "num_layers": 30, "out_dim": 48, "text_len": 512}
    assert dit_config.from_official(doc, "config.json") == dit_config.WAN22_TI2V_5B


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model_type": "s2v"}, "model_type = 's2v' is not one of"),
        ({"dim": 130}, "must split into num_heads"),
        ({"num_layers": 0}, "num_layers = 0 must be a positive integer"),
        ({"ffn_dim": "big"}, "ffn_dim = 'big'"),
        ({"window_size": [256, 256]}, "window_size"),
        ({"animate": True}, r"config keys \['animate'\]"),
        ({"patch_size": [1, 0, 2]}, r"patch_size = \[1, 0, 2\] must be three positive integers"),
        ({"patch_size": 2}, "patch_size = 2 must be a list of three integers"),
    ],
)
def test_invalid_official_configs_name_the_file(change, match):
    doc = {**official_config_json(tiny_config("t2v")), **change}
    with pytest.raises(ModelLoadError, match=match) as err:
        dit_config.from_official(doc, "/ckpt/config.json")
    assert str(err.value).startswith("/ckpt/config.json: ")


def test_check_refuses_clip_on_t2v():
    with pytest.raises(ModelLoadError, match="takes no CLIP"):
        dit_config.check(attrs.evolve(tiny_config("t2v"), clip=True), "x")
    assert isinstance(dit_config.check(tiny_config("flf2v"), "x"), DitConfig)


def test_a_finer_patch_in_config_json_is_honoured_by_every_reader():
    """A DiT patching (1, 1, 1) (the quickstart model's) is read from official and diffusers
    configs and off its weights' shapes, and runs: 8x8 latents become 64 tokens a frame."""
    cfg = attrs.evolve(tiny_config("t2v"), patch_size=(1, 1, 1))
    official = {**official_config_json(cfg), "patch_size": [1, 1, 1]}
    assert dit_config.from_official(official, "c.json") == cfg
    assert dit_config.from_diffusers(diffusers_config_json(cfg), "c.json") == cfg
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: WanDiT(cfg)).state_dict().items()}
    assert dit_config.from_shapes(shapes, "w.safetensors").patch_size == (1, 1, 1)
    assert dit_config.from_shapes(shapes, "w.safetensors").out_dim == cfg.out_dim
    assert dit_config.from_official(official_config_json(tiny_config("t2v")), "c.json").patch_size == (1, 2, 2)
