"""Cross-attention keys/values prepared once per prompt and reused across denoising steps."""

from __future__ import annotations

import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.models.dit import WanDiT

from ._dit_fixtures import diffusers_model, inputs, random_state, run_diffusers, tiny_config

#: (latent scale, timestep) of two denoising steps sharing one prepared context.
STEPS = ((1.0, 450.0), (0.5, 150.0))


@pytest.mark.parametrize("variant", ["i2v", "flf2v"])
def test_prepared_context_gives_the_same_steps_and_projects_once(variant):
    # t < 500 for the reason given in _dit_fixtures.inputs
    cfg = tiny_config(variant)
    state = random_state(cfg, seed=21)
    model = WanDiT(cfg)
    model.load_state_dict(state)
    model.eval()
    inp = inputs(cfg, seed=22)
    calls = []
    model.blocks[0].cross_attn.k_img.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        prepared = model.prepare_context(inp["context"], inp["clip_fea"])
        steps = [model(inp["x"] * s, torch.tensor([t]), prepared, y=inp["y"]) for s, t in STEPS]
    assert len(calls) == 1
    ref = diffusers_model(cfg, state)
    for (s, t), ours in zip(STEPS, steps):
        x, t = inp["x"] * s, torch.tensor([t])
        theirs = run_diffusers(ref, cfg, x, t, inp["context"], inp["clip_fea"], inp["y"])
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()
    assert (steps[0] - steps[1]).abs().max() > 0.1


def test_prepared_context_refuses_a_second_clip_and_another_batch():
    cfg = tiny_config("i2v")
    model = WanDiT(cfg)
    inp = inputs(cfg)
    with torch.no_grad():
        prepared = model.prepare_context(inp["context"], inp["clip_fea"])
    with pytest.raises(ModelInputError, match="pass it to prepare_context"):
        model(inp["x"], inp["t"], prepared, clip_fea=inp["clip_fea"], y=inp["y"])
    with pytest.raises(ModelInputError, match="prepared for batch 1, but x has batch 2"):
        model(inp["x"].repeat(2, 1, 1, 1, 1), inp["t"].repeat(2), prepared, y=inp["y"].repeat(2, 1, 1, 1, 1))
