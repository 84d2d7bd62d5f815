"""Animate samples in one batch: each keeps its own pose latents and face (prepared tokens, or the
crops the DiT encodes itself when its face encoders train), exactly as that sample alone."""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_animate import FACE_SIZE, animate_state, tiny_animate_config
from tests.train._batching import batched_and_alone
from wanflow.models.animate import AnimateDiT
from wanflow.models.animate_guidance import GuidedAnimateExtras
from wanflow.train.batch import collate, velocity


def _sample(dit: AnimateDiT, seed: int, prepared: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    face = torch.rand(1, 3, 5, FACE_SIZE, FACE_SIZE, generator=g) * 2 - 1
    with torch.no_grad():
        given = dit.prepare_face(face) if prepared else face
        uncond = dit.prepare_face(torch.full_like(face, -1.0))
    extras = GuidedAnimateExtras(pose=torch.randn(1, 16, 2, 2, 2, generator=g), face=given, uncond_face=uncond)
    return {"context": torch.randn(1, 5, 64, generator=g), "x0": torch.randn(1, 16, 3, 2, 2, generator=g),
            "y": torch.randn(1, 20, 3, 2, 2, generator=g), "clip": torch.randn(1, 257, 1280, generator=g),
            "extras": extras}


@pytest.mark.parametrize("prepared", [True, False], ids=["face-tokens", "face-crops"])
def test_a_batch_of_two_is_each_sample_s_velocity_in_turn(prepared):
    cfg = tiny_animate_config()
    dit = AnimateDiT(cfg)
    dit.load_state_dict(animate_state(cfg, 7))
    dit.eval()
    a, b = _sample(dit, 0, prepared), _sample(dit, 1, prepared)
    x = torch.randn(2, 16, 3, 2, 2, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([300.0, 800.0])
    both, alone = batched_and_alone(dit, a, b, x, t)
    with torch.no_grad():
        swapped = velocity(dit, collate([b, a], "cpu"), x, t)
    assert both.shape == (2, 16, 3, 2, 2)
    assert torch.allclose(both, alone, rtol=1e-5, atol=1e-5), (both - alone).abs().max()
    assert not torch.allclose(both, swapped, rtol=1e-3, atol=1e-3)  # each row reads its own pose and face
