"""The Wan2.2-Animate DiT against independent references on the same random weights (fp32).

- diffusers 0.42.1's ``WanAnimateTransformer3DModel``, weights converted by diffusers' own
  converter: the whole forward (x, y, pose latents, face crops, CLIP and text), with real faces
  and with the unconditional faces (-1), and the motion encoder and the face encoder alone.
- DiffSynth 2.1.12's ``wan_video_animate_adapter`` (the official Wan2.2 modules, copied): the
  released key names (blur kernels included) load strictly into ours, and each part computes
  the same. Loaded from its file alone (it needs only torch and einops); skipped where DiffSynth
  is not installed.
"""

from __future__ import annotations

import pytest
import torch

from wanflow.models.animate import AnimateExtras, unconditional_face
from wanflow.models.animate_config import MotionEncoderConfig
from wanflow.models.animate_face import FaceBlock, FaceEncoder
from wanflow.models.animate_motion import MotionEncoder

from ._animate_fixtures import (
    diffusers_model,
    inputs,
    model_of,
    official_modules,
    randn,
    seeded_state,
    tiny_config,
)

#: max |wanflow - reference| allowed (velocity outputs are of magnitude ~6).
ABS_TOL = 1e-4


def run_diffusers(ref, inp: dict, face: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref(torch.cat([inp["x"], inp["y"]], 1), inp["t"], inp["context"], inp["clip_fea"],
                   inp["pose"], face, return_dict=False)[0]


def run_ours(model, inp: dict, face) -> torch.Tensor:
    extras = AnimateExtras(pose=inp["pose"], face=face)
    with torch.no_grad():
        return model(inp["x"], inp["t"], inp["context"], inp["clip_fea"], inp["y"], extras=extras)


@pytest.mark.parametrize(("batch", "frames", "layers"), [(1, 3, 5), (2, 4, 10)])
def test_forward_matches_diffusers(batch, frames, layers):
    cfg = tiny_config(num_layers=layers)
    state = seeded_state(cfg, seed=3)
    ours, ref = model_of(cfg, state), diffusers_model(cfg, state)
    inp = inputs(cfg, seed=4, batch=batch, frames=frames)
    got, want = run_ours(ours, inp, inp["face"]), run_diffusers(ref, inp, inp["face"])
    assert (got - want).abs().max() < ABS_TOL
    # the face path is exercised: a black face moves the output far beyond the tolerance
    assert (got - run_ours(ours, inp, unconditional_face(inp["face"]))).abs().max() > 100 * ABS_TOL


def test_unconditional_face_matches_diffusers():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=5)
    ours, ref = model_of(cfg, state), diffusers_model(cfg, state)
    inp = inputs(cfg, seed=6)
    black = unconditional_face(inp["face"])
    assert torch.equal(black, torch.full_like(inp["face"], -1.0))
    assert (run_ours(ours, inp, black) - run_diffusers(ref, inp, black)).abs().max() < ABS_TOL


def test_prepared_face_gives_the_forward_of_the_pixels():
    cfg = tiny_config()
    model = model_of(cfg, seeded_state(cfg, seed=7))
    inp = inputs(cfg, seed=8, batch=2)
    with torch.no_grad():
        prepared = model.prepare_face(inp["face"], motion_batch=3)
    assert torch.allclose(run_ours(model, inp, prepared), run_ours(model, inp, inp["face"]), atol=1e-6)
    assert torch.equal(prepared.tokens[:, 0], torch.zeros_like(prepared.tokens[:, 0]))  # the reference's frame


@pytest.mark.parametrize(("size", "widths"), [(16, (8, 16, 16)), (32, (4, 8, 16, 16))])
def test_motion_encoder_matches_diffusers(size, widths):
    cfg = tiny_config(size=size, widths=widths)
    state = seeded_state(cfg, seed=9)
    ours, ref = model_of(cfg, state), diffusers_model(cfg, state)
    faces = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(10)) * 2 - 1
    with torch.no_grad():
        got, want = ours.motion_encoder(faces), ref.motion_encoder(faces)
    assert (got - want).abs().max() < 1e-5
    assert (got[0] - got[1]).abs().max() > 1e-2  # each face gives its own motion


def test_face_encoder_matches_diffusers():
    cfg = tiny_config()
    state = seeded_state(cfg, seed=11)
    ours, ref = model_of(cfg, state), diffusers_model(cfg, state)
    motion = randn(2, 13, cfg.motion.direction_dim, seed=12)
    with torch.no_grad():
        got, want = ours.face_encoder(motion), ref.face_encoder(motion)
    assert got.shape == (2, 4, cfg.face_tokens, cfg.dit.dim)  # 13 -> 7 -> 4 frames
    assert (got - want).abs().max() < 1e-5


# ----------------------------------------------------------------------------- the official modules


def test_motion_encoder_matches_official_with_its_kernels():
    official = official_modules()
    torch.manual_seed(13)
    ref = official.Generator(size=16, style_dim=512, motion_dim=20).eval()  # LIA's 512-wide table
    ours = MotionEncoder(MotionEncoderConfig(size=16)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the released names, blur kernels included
    faces = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(14)) * 2 - 1
    with torch.no_grad():
        got, want = ours(faces), ref.dec.direction(ref.enc.enc_motion(faces))
    assert (got - want).abs().max() < 1e-5
    assert (got[0] - got[1]).abs().max() > 1e-2


def test_face_encoder_and_block_match_official():
    official = official_modules()
    torch.manual_seed(15)
    ref_encoder = official.FaceEncoder(in_dim=32, hidden_dim=128, num_heads=4).eval()  # 1024 x 4 heads inside
    ref_block = official.FaceBlock(128, 2).eval()
    with torch.no_grad():
        for p in [*ref_encoder.parameters(), *ref_block.parameters()]:
            p.normal_(0, 0.1)
    encoder, block = FaceEncoder(32, 1024, 4, 128).eval(), FaceBlock(128, 2).eval()
    encoder.load_state_dict(ref_encoder.state_dict(), strict=True)
    block.load_state_dict(ref_block.state_dict(), strict=True)
    motion, x = randn(2, 9, 32, seed=16), randn(2, 3 * 16, 128, seed=17)
    with torch.no_grad():
        face = encoder(motion)
        assert (face - ref_encoder(motion)).abs().max() < 1e-5
        face = torch.cat([torch.zeros_like(face[:, :1]), face], dim=1)  # 9 -> 3 frames, plus the reference's
        assert (block(x, face, "sdpa") - ref_block(x, face)).abs().max() < 1e-5
