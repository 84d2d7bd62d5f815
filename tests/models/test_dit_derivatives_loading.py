"""Loading the derivative DiTs: recognised by their keys and shapes in every file layout they ship
in, the same numbers whatever the layout, and refused with what the file looks like when a family
expects another architecture."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.models import dit_config
from wanflow.models.dit import WanDiT
from wanflow.models.dit_config import DERIVATIVE_VARIANTS
from wanflow.models.dit_extras import DitExtras
from wanflow.models.dit_loader import load_dit
from wanflow.models.loading import build_on_meta
from wanflow.models.motion_controller import load_motion_controller
from wanflow.models.signature import ARCHITECTURES, architecture_mismatch, identify

from ._derivative_fixtures import (
    WAN_HEAD_DIM,
    diffusers_layout,
    fun_config,
    seeded_state,
    vace_config,
)
from ._dit_fixtures import (
    diffusers_config_json,
    inputs,
    official_config_json,
    tiny_config,
    write_checkpoint,
)

#: (parameters, tensors) of each derivative release's DiT, from the reference facts (§2.2).
RELEASED = {
    "wan2.1-fun-inp-1.3b": (1.5644e9, 983),
    "wan2.1-fun-v1.1-control-1.3b": (1.5646e9, 985),
    "wan2.1-fun-v1.1-control-camera-1.3b": (1.6163e9, 989),
    "wan2.2-fun-control-a14b": (14.290e9, 1097),
    "wan2.2-fun-control-camera-a14b": (14.792e9, 1101),
}
#: The VACE part alone (``vace_*`` tensors): parameters and tensors.
VACE_PART = {"wan2.1-vace-1.3b": (0.735e9, 439), "wan2.1-vace-14b": (3.049e9, 236)}


def meta_state(cfg) -> dict[str, torch.Tensor]:
    return build_on_meta(lambda: WanDiT(cfg)).state_dict()


def meta_shapes(cfg) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in meta_state(cfg).items()}


@pytest.mark.parametrize("name", sorted(DERIVATIVE_VARIANTS))
def test_released_derivatives_are_read_back_from_their_shapes(name):
    cfg = DERIVATIVE_VARIANTS[name]
    shapes = meta_shapes(cfg)
    assert dit_config.from_shapes(shapes, name) == cfg  # VACE layers from the block count
    if name in RELEASED:
        params, tensors = RELEASED[name]
        assert abs(sum(torch.Size(s).numel() for s in shapes.values()) - params) < 0.0005e9
        assert len(shapes) == tensors
    if name in VACE_PART:
        vace = {k: s for k, s in shapes.items() if k.startswith("vace")}
        params, tensors = VACE_PART[name]
        assert abs(sum(torch.Size(s).numel() for s in vace.values()) - params) < 0.0005e9
        assert len(vace) == tensors
    assert len(DERIVATIVE_VARIANTS) == 8


def test_vace_layers_spread_over_the_main_blocks():
    assert dit_config.WAN21_VACE_1_3B.vace_layers == tuple(range(0, 30, 2))
    assert dit_config.WAN21_VACE_14B.vace_layers == (0, 5, 10, 15, 20, 25, 30, 35)
    assert dit_config.even_layers(15, 30) == tuple(range(0, 30, 2))
    assert dit_config.even_layers(8, 40) == tuple(range(0, 40, 5))


# ----------------------------------------------------------------------------- layouts


def vace_official_json(cfg) -> dict:
    return {**official_config_json(cfg), "_class_name": "VaceWanModel", "model_type": "vace",
            "vace_layers": list(cfg.vace_layers), "vace_in_dim": cfg.vace_in_dim}


def vace_diffusers_json(cfg) -> dict:
    return {**diffusers_config_json(cfg), "_class_name": "WanVACETransformer3DModel",
            "vace_layers": list(cfg.vace_layers), "vace_in_channels": cfg.vace_in_dim}


def write(folder, cfg, state, layout: str):
    """One checkpoint as each release ships it; returns what to hand the loader."""
    folder.mkdir(parents=True)
    if layout == "official-config":
        write_checkpoint(folder, cfg, state, config=False)
        (folder / "config.json").write_text(json.dumps(vace_official_json(cfg) if cfg.vace_layers
                                                       else official_config_json(cfg)))
        return folder / "diffusion_pytorch_model.safetensors"
    if layout == "sharded":
        return write_checkpoint(folder, cfg, state, shards=3, config=False)
    if layout == "diffusers":
        path = folder / "diffusion_pytorch_model.safetensors"
        save_file(diffusers_layout(state), str(path))
        (folder / "config.json").write_text(json.dumps(vace_diffusers_json(cfg) if cfg.vace_layers
                                                       else diffusers_config_json(cfg)))
        return path
    prefix = {"one-file": "", "comfyui": "model.diffusion_model.", "krea": "model."}[layout]
    path = folder / "model.safetensors"
    save_file({prefix + k: v for k, v in state.items()}, str(path))
    return path


LAYOUTS = ["one-file", "official-config", "sharded", "diffusers", "comfyui", "krea"]


def derivative_extras(cfg) -> DitExtras:
    gen = torch.Generator().manual_seed(31)
    if cfg.vace_layers:
        return DitExtras(vace_context=torch.randn(1, 96, 3, 8, 8, generator=gen), vace_scale=0.75)
    if cfg.camera_in_dim:
        return DitExtras(camera=torch.randn(1, 24, 3, 64, 64, generator=gen))
    return DitExtras(reference=torch.randn(1, 16, 8, 8, generator=gen))


@pytest.mark.parametrize("kind", ["vace", "v11-control", "camera"])
def test_every_layout_loads_to_the_same_model(tmp_path, kind):
    # files without config.json are read with the released head width (128)
    cfg = vace_config(dim=2 * WAN_HEAD_DIM) if kind == "vace" else fun_config(kind, head_dim=WAN_HEAD_DIM)
    state = seeded_state(cfg, seed=30)
    inp, extras = inputs(cfg, seed=32), derivative_extras(cfg)
    outputs = {}
    for layout in LAYOUTS:
        model = load_dit(write(tmp_path / layout, cfg, state, layout))
        assert model.cfg == cfg, layout
        with torch.no_grad():
            outputs[layout] = model(**inp, extras=extras)
    for layout in LAYOUTS[1:]:
        assert torch.equal(outputs[layout], outputs["one-file"]), layout


def test_layouts_are_named_in_the_signature():
    cfg = vace_config()
    state = seeded_state(cfg, seed=33)
    assert identify(diffusers_layout(state)).layout == "diffusers"
    assert identify({"model." + k: v for k, v in state.items()}).layout == "krea"
    found = identify({"model.diffusion_model." + k: v for k, v in state.items()})
    assert (found.layout, found.variant, found.details["vace_layers"]) == ("comfyui", "vace", 2)


def test_krea_file_is_a_plain_t2v_dit(tmp_path):
    cfg = tiny_config("t2v", dim=2 * WAN_HEAD_DIM)
    state = seeded_state(cfg, seed=34)
    path = write(tmp_path / "krea", cfg, state, "krea")
    model = load_dit(path, architecture="krea-realtime-video-14b")
    assert model.cfg == cfg
    assert torch.equal(model.blocks[1].ffn[0].weight, state["blocks.1.ffn.0.weight"])


# ----------------------------------------------------------------------------- refusals


def test_a_vace_file_offered_as_t2v_and_a_t2v_file_offered_as_vace_are_refused(tmp_path):
    vace_cfg, t2v_cfg = vace_config(dim=2 * WAN_HEAD_DIM), tiny_config("t2v", dim=2 * WAN_HEAD_DIM)
    vace_path = write(tmp_path / "vace", vace_cfg, seeded_state(vace_cfg, 35), "one-file")
    t2v_path = write(tmp_path / "t2v", t2v_cfg, seeded_state(t2v_cfg, 36), "one-file")
    with pytest.raises(ModelLoadError, match=r"needs a Wan T2V DiT \(wan2.1-t2v-1.3b\), but the file looks like "
                                             r"a Wan2.1 VACE DiT \(.*2 VACE blocks; official key layout\)"):
        load_dit(vace_path, architecture="wan2.1-t2v-1.3b")
    with pytest.raises(ModelLoadError, match=r"needs a Wan2.1 VACE DiT .* looks like a Wan T2V DiT"):
        load_dit(t2v_path, architecture="wan2.1-vace-1.3b")
    assert load_dit(vace_path, architecture="wan2.1-vace-1.3b").cfg == vace_cfg


def test_fun_versions_and_kinds_are_told_apart():
    v10 = identify(meta_state(fun_config("control")))
    v11 = identify(meta_state(fun_config("v11-control")))
    camera = identify(meta_state(fun_config("camera")))
    assert architecture_mismatch("wan2.1-fun-control-1.3b", v10) is None
    assert architecture_mismatch("wan2.1-fun-v1.1-control-1.3b", v11) is None
    assert "with ref_conv (V1.1)" in architecture_mismatch("wan2.1-fun-v1.1-control-1.3b", v10)
    assert "without ref_conv (V1.0)" in architecture_mismatch("wan2.1-fun-control-1.3b", v11)
    assert "looks like a Wan2.1 Fun Control-Camera DiT" in architecture_mismatch("wan2.1-fun-inp-1.3b", camera)
    assert architecture_mismatch("a-plugin-architecture", camera) is None
    assert len(ARCHITECTURES) == 30


def test_released_architectures_match_their_own_shapes():
    named = {"wan2.1-vace-1.3b": "wan2.1-vace-1.3b", "wan2.1-vace-14b": "wan2.2-vace-fun-a14b"}
    for variant, cfg in DERIVATIVE_VARIANTS.items():
        found = identify(meta_state(cfg))
        assert architecture_mismatch(named.get(variant, variant), found) is None, variant


def test_extras_the_weights_cannot_use_or_need_are_refused():
    t2v = WanDiT(tiny_config("t2v")).eval()
    vace = WanDiT(vace_config()).eval()
    inp = inputs(tiny_config("t2v"), seed=37)
    context = torch.zeros(1, 96, 3, 8, 8)
    cases = [
        (t2v, DitExtras(reference=torch.zeros(1, 16, 8, 8)), "reference: this DiT has no reference embedding"),
        (t2v, DitExtras(camera=torch.zeros(1, 24, 3, 64, 64)), "camera: this DiT has no camera adapter"),
        (t2v, DitExtras(vace_context=context), "vace_context: this DiT has no VACE blocks"),
        (t2v, DitExtras(vace_scale=0.5), "vace_scale: 0.5 given without a vace_context"),
        (t2v, DitExtras(modulation=torch.zeros(1, 6, 64)), r"modulation: shape \(1, 6, 64\); expected \(1, 6, 128\)"),
        (vace, None, "vace_context: a VACE DiT needs its context"),
        (vace, DitExtras(vace_context=context[:, :, :2]), r"vace_context: shape \(1, 96, 2, 8, 8\)"),
        (vace, DitExtras(vace_context=context, vace_scale=float("nan")), "vace_scale: nan is not a finite number"),
        (vace, DitExtras(vace_context=context, vace_scale=[1.0]), "vace_scale: 1 values; this DiT has 2 VACE"),
    ]
    for model, extras, message in cases:
        with pytest.raises(ModelInputError, match=message):
            model(**inp, extras=extras)
    v11 = WanDiT(fun_config("v11-control")).eval()
    fun_inp = inputs(fun_config("v11-control"), seed=38)
    with pytest.raises(ModelInputError, match=r"reference: shape \(1, 16, 4, 4\)"):
        v11(**fun_inp, extras=DitExtras(reference=torch.zeros(1, 16, 4, 4)))


def test_reference_tokens_get_the_last_token_timestep_and_are_dropped():
    """Per-token t: the reference tokens take the last video token's t (the Fun authors' padding),
    not the first frame's; they are dropped before the output, which has the video's shape."""
    cfg = fun_config("a14b-control")
    dit = WanDiT(cfg).eval()
    dit.load_state_dict(seeded_state(cfg, seed=39))
    inp = inputs(cfg, seed=40)
    reference = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(41))
    extras = DitExtras(reference=reference)
    per_token = torch.full((1, 3 * 16), 420.0)
    per_token[:, :16] = 0.0  # a clean first frame
    with torch.no_grad():
        stacked = dit.embed_inputs(inp["x"], per_token, inp["context"], y=inp["y"], extras=extras)
        out = dit(inp["x"], per_token, inp["context"], y=inp["y"], extras=extras)
    assert stacked.prefix == 16 and stacked.tokens.shape[1] == 16 + 48
    assert torch.equal(stacked.e[:, :16], stacked.e[:, -16:])
    assert not torch.allclose(stacked.e[:, :16], stacked.e[:, 16:32])
    assert out.shape == inp["x"].shape


# ----------------------------------------------------------------------------- motion controller


def test_motion_controller_loads_from_its_file_and_refuses_others(tmp_path):
    gen = torch.Generator().manual_seed(42)
    state = {"linear.0.weight": torch.randn(128, 256, generator=gen), "linear.0.bias": torch.randn(128, generator=gen),
             "linear.2.weight": torch.randn(128, 128, generator=gen), "linear.2.bias": torch.randn(128, generator=gen),
             "linear.4.weight": torch.randn(768, 128, generator=gen), "linear.4.bias": torch.randn(768, generator=gen)}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    controller = load_motion_controller(path)
    assert controller.dim == 128 and torch.equal(controller.linear[4].bias, state["linear.4.bias"])
    with torch.no_grad():
        slow, fast = controller(torch.tensor([0.0])), controller(torch.tensor([100.0]))
    assert slow.shape == (1, 6, 128) and (slow - fast).abs().max() > 0.1
    t2v = tmp_path / "t2v"
    dit_path = write(t2v, tiny_config("t2v"), seeded_state(tiny_config("t2v"), 43), "one-file")
    with pytest.raises(ModelLoadError, match="expected a speed-control motion controller .* this is a Wan T2V DiT"):
        load_motion_controller(dit_path)
    assert architecture_mismatch("wan2.1-motion-controller", identify(state)) is None
