"""The Wan-Fun authors' "Flow" grid (solver "flow"): diffusers' FlowMatchEulerDiscreteScheduler as
VideoX-Fun builds it, bit for bit, and the families whose authors sample with it."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from wanflow.errors import ModelInputError
from wanflow.plugins import build_registry
from wanflow.sampling import make_schedule


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 12.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 50])
def test_the_grid_is_the_scheduler_s_bit_for_bit(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    ours = make_schedule("flow", steps, shift)
    assert torch.equal(ours.sigmas, scheduler.sigmas)
    assert torch.equal(ours.timesteps, scheduler.timesteps)


def test_the_grid_ends_with_a_jump_from_the_shifted_minimum():
    """σ = s(linspace(1, s(0.001), N)), then 0 (4 steps, shift 5: the figures VideoX-Fun walks)."""
    sigmas = make_schedule("flow", 4, 5.0).sigmas
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.9097, 0.7173, 0.0244, 0.0]), atol=1e-4, rtol=0)
    assert make_schedule("euler", 4, 5.0).sigmas[3] > 0.6  # DiffSynth's grid walks on evenly


def test_strength_starts_the_even_placement_lower_and_keeps_every_step():
    full, kept = make_schedule("flow", 10, 5.0), make_schedule("flow", 10, 5.0, strength=0.6)
    assert kept.steps == 10
    assert float(kept.sigmas[0]) == pytest.approx(5 * 0.6 / (1 + 4 * 0.6), rel=1e-6)  # s(strength)
    assert float(kept.sigmas[-2]) == pytest.approx(float(full.sigmas[-2]), rel=1e-6)  # same last σ
    with pytest.raises(ModelInputError, match="denoising_strength"):
        make_schedule("flow", 10, 5.0, strength=0.0)


def test_wan_fun_and_vace_fun_sample_as_their_authors_do():
    registry = build_registry(entry_points=False)
    fun = [name for name in registry.family_names() if "-fun-" in name]
    assert len(fun) == 14, fun  # the thirteen Wan-Fun releases and Wan2.2-VACE-Fun
    for name in fun:
        assert registry.family(name).defaults["sampler.solver"] == "flow", name
    assert registry.family("wan2.1-1.3b-speedcontrol").defaults["sampler.solver"] == "euler"  # DiffSynth's
    assert "flow" in registry.solver_names()
