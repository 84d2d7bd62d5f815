"""The S2V DiT against DiffSynth 2.1.12's ``models/wan_video_dit_s2v.py`` and its ``model_fn_wans2v``
(a copy of the official Wan2.2 S2V model code), fp32, tiny seeded weights loaded into both.

DiffSynth is a test-only reference, installed where it is (not in CI). Its package imports
torchvision for data loaders and the CLIP encoder, which these checks never run: where
torchvision is missing an inert stand-in takes its place while DiffSynth imports. DiffSynth's S2V
code runs one sample (its token-type ids and RoPE tables are built for batch 1); the references
take the reference latent as frame 0 of x and hand it back unchanged, which is cut off here.
"""

from __future__ import annotations

import importlib.util
import types

import pytest
import torch
import torch.nn.functional as F

from tests.models._derivative_fixtures import torchvision_stand_in
from tests.models.test_s2v_model import TINY, inputs, run, seeded_state, tiny

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

#: On outputs of scale ~4 the measured max |Δ| is ~1.2e-6 (RoPE in fp32 here, float64 there;
#: fused modulation); the audio tokens agree exactly.
TOLERANCE = 1e-5

#: A latent of 16 x 24: the coarse motion tokens' rows (0, 2, 4, 7 and 0, 7) and columns differ,
#: so a swapped or mis-spread axis shows.
HEIGHT, WIDTH = 16, 24


def reference() -> types.SimpleNamespace:
    """DiffSynth's S2V model class and model function, or skip where DiffSynth is not installed."""
    if importlib.util.find_spec("diffsynth") is None:
        pytest.skip("DiffSynth is not installed (a test-only reference: pip install --no-deps diffsynth==2.1.12)")
    with torchvision_stand_in():
        from diffsynth.models.wan_video_dit_s2v import WanS2VModel
        from diffsynth.pipelines.wan_video import model_fn_wans2v
    return types.SimpleNamespace(Model=WanS2VModel, model_fn=model_fn_wans2v)


@pytest.fixture(scope="module")
def pair():
    """(ours, DiffSynth's) holding the same seeded weights (strict load on both sides)."""
    ref = reference()
    state = seeded_state(TINY, seed=21)
    d = TINY.dit
    theirs = ref.Model(
        dim=d.dim, in_dim=d.in_dim, ffn_dim=d.ffn_dim, out_dim=d.out_dim, text_dim=d.text_dim, freq_dim=d.freq_dim,
        eps=d.eps, patch_size=d.patch_size, num_heads=d.num_heads, num_layers=d.num_layers, cond_dim=TINY.cond_dim,
        audio_dim=TINY.audio_dim, num_audio_token=TINY.audio_tokens, audio_inject_layers=list(TINY.inject_layers),
    )
    theirs.load_state_dict(state, strict=True)
    ours = tiny(seed=21)
    return ours, theirs.eval(), ref.model_fn


def _theirs(pair, data: dict, pose: bool, motion: bool) -> torch.Tensor:
    """DiffSynth's velocity for the clip (its pass-through reference frame dropped)."""
    _, theirs, model_fn = pair
    context = F.pad(data["context"], (0, 0, 0, 512 - data["context"].shape[1]))  # the text encoder's 512 slots
    with torch.no_grad():
        out = model_fn(theirs, torch.cat([data["ref"], data["x"]], dim=2), torch.tensor([640.0]), context,
                       data["audio"], data["motion"], data["pose"] if pose else None,
                       drop_motion_frames=not motion)
    return out[:, :, 1:]


@pytest.mark.parametrize("pose, motion", [(True, True), (True, False), (False, True), (False, False)])
def test_the_forward_matches_the_reference(pair, pose, motion):
    data = inputs(frames=3, seed=pose + 2 * motion)
    gen = torch.Generator().manual_seed(30 + pose + 2 * motion)
    for name, frames in (("x", 3), ("ref", 1), ("pose", 3), ("motion", 19)):
        data[name] = torch.randn(1, 16, frames, HEIGHT, WIDTH, generator=gen)
    ours = run(pair[0], data, t=640.0, pose=data["pose"] if pose else None, motion=data["motion"] if motion else None)
    theirs = _theirs(pair, data, pose, motion)
    assert ours.shape == theirs.shape == (1, 16, 3, HEIGHT, WIDTH)
    assert theirs.abs().max() > 1.0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)


def test_the_audio_encoder_matches_the_reference(pair):
    ours, theirs, _ = pair
    audio = torch.randn(1, TINY.audio_layers, TINY.audio_dim, 4 * 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        prepared = ours.prepare_audio(audio)
        glob, local = theirs.cal_audio_emb(audio)  # (1, F, 1, D), (1, F, 5, D)
    assert local.shape == prepared.local.shape == (1, 6, TINY.audio_tokens + 1, TINY.dit.dim)
    torch.testing.assert_close(prepared.local, local, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(prepared.glob, glob[:, :, 0], rtol=0, atol=TOLERANCE)


def test_the_causal_convolutions_match_the_reference_without_the_lead_in(pair):
    """The encoder alone on buckets whose first frames differ: its replicate padding shows here,
    where the 73-frame lead-in of a forward hides it."""
    ours, theirs, _ = pair
    audio = torch.randn(1, TINY.audio_layers, TINY.audio_dim, 10, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        local, glob = ours.casual_audio_encoder(audio)
        their_glob, their_local = theirs.casual_audio_encoder(audio)
    assert local.shape == their_local.shape == (1, 3, TINY.audio_tokens + 1, TINY.dit.dim)
    torch.testing.assert_close(local, their_local, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(glob, their_glob[:, :, 0], rtol=0, atol=TOLERANCE)
