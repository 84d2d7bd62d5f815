"""The derivative DiT parts against independent references on the same random weights (fp32).

- VACE (hints, per-layer scales, reference frames) and Fun InP / Control V1.0 (extra input
  channels with CLIP) against diffusers, weights converted by diffusers' own converter.
- ``ref_conv`` reference tokens, the camera adapter and the speed-control motion controller
  against DiffSynth 2.1.12 (the only references that have them); skipped where DiffSynth is not
  installed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wanflow.models.dit import WanDiT
from wanflow.models.dit_cache import cached_forward, time_signals
from wanflow.models.dit_extras import DitExtras
from wanflow.models.motion_controller import MotionController
from wanflow.sampling.step_cache import FirstBlockRule, StepCache, TeaCacheRule

from ._derivative_fixtures import (
    WAN_HEAD_DIM,
    diffsynth_dit,
    diffusers_vace_model,
    fun_config,
    import_diffsynth,
    seeded_state,
    vace_config,
)
from ._dit_fixtures import inputs, run_diffusers

#: max |wanflow - reference| allowed (outputs are of magnitude ~5).
ABS_TOL = 1e-4


def model_of(cfg, state) -> WanDiT:
    dit = WanDiT(cfg)
    dit.load_state_dict(state, strict=True)
    return dit.eval()


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def padded(context: torch.Tensor) -> torch.Tensor:
    """The text context zero-padded to 512 tokens, as the official code (and wanflow) feed it."""
    return F.pad(context, (0, 0, 0, 512 - context.shape[1]))


# ----------------------------------------------------------------------------- VACE vs diffusers


def vace_context(frames: int, references: int, seed: int) -> torch.Tensor:
    """(1, 96, refs + frames, 8, 8): each reference frame is [latent (16), zeros (16), zeros (64)]."""
    video = randn(1, 96, frames, 8, 8, seed=seed)
    refs = torch.cat([randn(1, 16, references, 8, 8, seed=seed + 1), torch.zeros(1, 80, references, 8, 8)], 1)
    return torch.cat([refs, video], dim=2)


def run_vace_diffusers(ref, inp, context, scale) -> torch.Tensor:
    scales = torch.tensor(scale if isinstance(scale, list) else [scale] * len(ref.config.vace_layers))
    with torch.no_grad():
        return ref(inp["x"], inp["t"], padded(inp["context"]), control_hidden_states=context,
                   control_hidden_states_scale=scales, return_dict=False)[0]


@pytest.mark.parametrize(("references", "scale", "batch"),
                         [(0, 1.0, 1), (1, 0.6, 1), (2, [0.5, 1.5], 1), (1, [1.25, 0.25], 2)])
def test_vace_matches_diffusers(references, scale, batch):
    cfg = vace_config()
    state = seeded_state(cfg, seed=3)
    ours, ref = model_of(cfg, state), diffusers_vace_model(cfg, state)
    frames = 3 + references  # the reference frames come first in x as in the context
    inp = inputs(cfg, seed=4, batch=batch, grid=(frames, 8, 8))
    context = vace_context(3, references, seed=5)  # batch 1: expanded to x's batch
    with torch.no_grad():
        got = ours(**inp, extras=DitExtras(vace_context=context, vace_scale=scale))
        without_hints = ours(**inp, extras=DitExtras(vace_context=context, vace_scale=0.0))
    want = run_vace_diffusers(ref, inp, context.expand(batch, -1, -1, -1, -1), scale)
    assert (got - want).abs().max() <= ABS_TOL
    assert (got - without_hints).abs().max() > 0.1  # the hints matter at this scale


def test_vace_with_a_prepared_context_equals_the_raw_one():
    cfg = vace_config()
    dit = model_of(cfg, seeded_state(cfg, seed=6))
    inp = inputs(cfg, seed=7)
    extras = DitExtras(vace_context=vace_context(3, 0, seed=8), vace_scale=0.8)
    with torch.no_grad():
        raw = dit(**inp, extras=extras)
        prepared = dit(inp["x"], inp["t"], dit.prepare_context(inp["context"]), extras=extras)
    assert torch.equal(raw, prepared)


@pytest.mark.parametrize("rule", [TeaCacheRule((1.0, 0.0), 10.0, "e"), FirstBlockRule(10.0)])
def test_a_step_cache_runs_vace_with_the_block_stack(rule):
    """Never skipping: bit-identical to the plain forward. Skipping: the VACE blocks are skipped
    with the main blocks (a First-Block-Cache runs block 0 and so VACE block 0 only), and the
    cached residual, hints included, stands in for them."""
    cfg = vace_config()
    dit = model_of(cfg, seeded_state(cfg, seed=9))
    inp = inputs(cfg, seed=10)
    extras = DitExtras(vace_context=vace_context(3, 0, seed=11), vace_scale=0.9)
    ts = [torch.tensor([900.0]), torch.tensor([880.0])]
    calls = []
    for i, block in enumerate(dit.vace_blocks):
        block.register_forward_hook(lambda *a, i=i: calls.append(i))
    with torch.no_grad():
        never = StepCache(TeaCacheRule((1.0, 0.0), 0.0), [900.0, 880.0, 0.0])
        for t in ts:
            assert torch.equal(cached_forward(dit, inp["x"], t, inp["context"], cache=never, branch="c",
                                              extras=extras), dit(inp["x"], t, inp["context"], extras=extras))
        calls.clear()
        cache = StepCache(rule, [900.0, 880.0, 0.0])
        cached_forward(dit, inp["x"], ts[0], inp["context"], cache=cache, branch="c", extras=extras)
        assert calls == [0, 1]
        skipped = cached_forward(dit, inp["x"], ts[1], inp["context"], cache=cache, branch="c", extras=extras)
        computed = dit(inp["x"], ts[1], inp["context"], extras=extras)
    assert cache.computed_steps("c") == (0,)
    assert calls[2:] == ([0] if rule.uses_first_block else []) + [0, 1]  # the skip ran no VACE block
    assert not torch.allclose(skipped, computed, atol=1e-3)


# ----------------------------------------------------------------------------- Fun vs diffusers


@pytest.mark.parametrize("kind", ["inp", "control"])
def test_fun_inp_and_control_v10_match_diffusers(kind):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from ._dit_fixtures import diffusers_config_json

    cfg = fun_config(kind)
    state = seeded_state(cfg, seed=12)
    doc = {k: v for k, v in diffusers_config_json(cfg).items() if not k.startswith("_")}
    ref = WanTransformer3DModel(**doc)
    ref.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True)
    inp = inputs(cfg, seed=13)
    assert inp["y"].shape[1] == cfg.in_dim - 16  # 20 (mask + image) or 32 (control + start image)
    with torch.no_grad():
        got = model_of(cfg, state)(**inp)
    want = run_diffusers(ref.eval(), cfg, **inp)
    assert (got - want).abs().max() <= ABS_TOL


# ----------------------------------------------------------------------------- DiffSynth


def diffsynth_velocity(ds, dit, inp, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return ds.model_fn(dit=dit, latents=inp["x"], timestep=inp["t"], context=padded(inp["context"]),
                           clip_feature=inp.get("clip_fea"), y=inp.get("y"), **kwargs)


@pytest.mark.parametrize("kind", ["v11-control", "a14b-control"])
def test_ref_conv_reference_tokens_match_diffsynth(kind):
    ds = import_diffsynth()
    cfg = fun_config(kind, head_dim=WAN_HEAD_DIM)
    state = seeded_state(cfg, seed=14)
    ours = model_of(cfg, state)
    inp = inputs(cfg, seed=15)
    reference = randn(1, 16, 8, 8, seed=16)
    with torch.no_grad():
        got = ours(**inp, extras=DitExtras(reference=reference))
        without = ours(**inp)
    want = diffsynth_velocity(ds, diffsynth_dit(cfg, state), inp, reference_latents=reference)
    assert got.shape == inp["x"].shape
    assert (got - want).abs().max() <= ABS_TOL
    assert (got - without).abs().max() > 0.01  # the reference tokens take part in attention


def test_camera_adapter_matches_diffsynth():
    ds = import_diffsynth()
    cfg = fun_config("camera", head_dim=WAN_HEAD_DIM)
    state = seeded_state(cfg, seed=17)
    inp = inputs(cfg, seed=18)
    camera = randn(1, 24, 3, 64, 64, seed=19)  # 8x the 8x8 latent
    with torch.no_grad():
        got = model_of(cfg, state)(**inp, extras=DitExtras(camera=camera))
    want = diffsynth_velocity(ds, diffsynth_dit(cfg, state), inp, control_camera_latents_input=camera)
    assert (got - want).abs().max() <= ABS_TOL
    # the adapter alone, on an input whose pixel order matters (PixelUnshuffle channel order)
    ds_adapter = diffsynth_dit(cfg, state).control_adapter
    ours_adapter = model_of(cfg, state).control_adapter
    with torch.no_grad():
        assert (ours_adapter(camera) - ds_adapter(camera)).abs().max() <= ABS_TOL


def motion_state(dim: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"linear.0": (dim, 256), "linear.2": (dim, dim), "linear.4": (6 * dim, dim)}
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=gen) * 0.1
        state[f"{name}.bias"] = torch.randn(shape[0], generator=gen) * 0.1
    return state


def test_motion_controller_and_speed_control_match_diffsynth():
    ds = import_diffsynth()
    cfg = vace_config(vace_layers=(), dim=2 * WAN_HEAD_DIM)  # a plain tiny T2V DiT
    state = seeded_state(cfg, seed=20)
    controller_state = motion_state(cfg.dim, seed=21)
    ours = MotionController(cfg.dim)
    ours.load_state_dict(controller_state, strict=True)
    theirs = ds.MotionController(dim=cfg.dim)
    theirs.load_state_dict(controller_state, strict=True)
    ids = torch.tensor([37.0])
    with torch.no_grad():
        offset = ours(ids)
        assert (offset.flatten(1) - theirs(ids)).abs().max() <= ABS_TOL
        inp = inputs(cfg, seed=22)
        got = model_of(cfg, state)(**inp, extras=DitExtras(modulation=offset))
        plain = model_of(cfg, state)(**inp)
    want = diffsynth_velocity(ds, diffsynth_dit(cfg, state), inp, motion_controller=theirs, motion_bucket_id=ids)
    assert (got - want).abs().max() <= ABS_TOL
    assert (got - plain).abs().max() > 0.01


def test_speed_control_offset_joins_the_blocks_not_the_head_nor_the_plan_signals():
    cfg = vace_config(vace_layers=())
    dit = model_of(cfg, seeded_state(cfg, seed=23))
    offset = randn(1, 6, cfg.dim, seed=24)
    t = torch.tensor([700.0])
    inp = inputs(cfg, seed=25)
    inputs_plain = dit.embed_inputs(inp["x"], t, inp["context"])
    inputs_offset = dit.embed_inputs(inp["x"], t, inp["context"], extras=DitExtras(modulation=offset))
    assert torch.equal(inputs_plain.e, inputs_offset.e)
    assert torch.allclose(inputs_offset.e0 - inputs_plain.e0, offset.unsqueeze(1), atol=1e-6)
    (signal,) = time_signals(dit, [t], DitExtras(modulation=offset))
    assert torch.equal(signal.e0, inputs_offset.e0)
