"""wanflow's DiT against diffusers' WanTransformer3DModel on the same random weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from ._dit_fixtures import (
    VARIANTS, diffusers_model, inputs, random_state, run_diffusers, tiny_config, write_checkpoint,
)
from wanflow.models.dit_loader import load_dit

#: max |wanflow - diffusers| allowed, relative to max |diffusers output|.
REL_TOL = 1e-5


def _compare(model, ref, cfg, inp) -> tuple[float, float]:
    """(max abs error, output scale) of wanflow vs diffusers on one set of inputs."""
    with torch.no_grad():
        ours = model(**inp)
    theirs = run_diffusers(ref, cfg, **inp)
    assert ours.shape == theirs.shape
    return (ours - theirs).abs().max().item(), theirs.abs().max().item()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_official_checkpoint_matches_diffusers(tmp_path, variant):
    cfg = tiny_config(variant)
    state = random_state(cfg, seed=3)
    path = write_checkpoint(tmp_path, cfg, state)
    model = load_dit(path)
    assert model.cfg == cfg  # config.json read back (i2v CLIP decided by the weights)
    err, scale = _compare(model, diffusers_model(cfg, state), cfg, inputs(cfg, seed=4))
    assert scale > 0.1
    assert err <= REL_TOL * scale, f"{variant}: max |diff| {err:.3g} at scale {scale:.3g}"


def test_ti2v_per_token_timesteps_batch_two_match_diffusers():
    cfg = tiny_config("ti2v")
    state = random_state(cfg, seed=5)
    model, ref = load_state(cfg, state), diffusers_model(cfg, state)
    inp = inputs(cfg, seed=6, batch=2)
    tokens = 3 * 4 * 4
    t = torch.tensor([[480.0], [200.0]]).expand(2, tokens).clone()
    t[:, :16] = 0.0  # first latent frame's tokens are clean (image conditioning)
    inp["t"] = t
    err, scale = _compare(model, ref, cfg, inp)
    assert err <= REL_TOL * scale
    # per-token t really acts per token: first-frame t=0 differs from a uniform t
    with torch.no_grad():
        uniform = model(**{**inp, "t": torch.tensor([480.0, 200.0])})
        split = model(**inp)
    assert (uniform[:, :, 1:] - split[:, :, 1:]).abs().max() > 0  # attention mixes frames
    assert (uniform[:, :, 0] - split[:, :, 0]).abs().max() > 1e-3


def test_batch_of_two_equals_two_single_runs():
    cfg = tiny_config("i2v")
    model = load_state(cfg, random_state(cfg, seed=7))
    inp = inputs(cfg, seed=8, batch=2)
    with torch.no_grad():
        both = model(**inp)
        first = model(**{k: v[:1] for k, v in inp.items()})
    assert torch.allclose(both[:1], first, atol=1e-5 * first.abs().max().item())
    assert (both[0] - both[1]).abs().max() > 0.1


def test_flf2v_accepts_image_pairs_in_either_shape():
    cfg = tiny_config("flf2v")
    model = load_state(cfg, random_state(cfg, seed=9))
    inp = inputs(cfg, seed=10)
    with torch.no_grad():
        joined = model(**inp)
        pairs = model(**{**inp, "clip_fea": inp["clip_fea"].reshape(2, 257, 1280)})
    assert torch.equal(joined, pairs)


def load_state(cfg, state):
    """A wanflow DiT holding `state` (no file round trip)."""
    from wanflow.models.dit import WanDiT

    model = WanDiT(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()
