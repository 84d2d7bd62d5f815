"""Schedules: the official grids and timesteps, DiffSynth's Euler grid, strength, expert switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from wanflow.errors import ModelInputError
from wanflow.sampling import (
    Expert,
    ExpertSegment,
    denoise_start,
    dpmpp_schedule,
    euler_schedule,
    expert_plan,
    expert_segments,
    make_schedule,
    shift_sigmas,
    unipc_schedule,
)


@pytest.mark.parametrize(
    "steps, shift, head, tail",
    [
        (50, 5.0, [999, 995, 991, 987, 982, 978], [241, 172, 92]),
        (40, 12.0, [999, 997, 995, 993, 990], [492, 386, 235]),
        (40, 3.0, [999, 991, 982, 973, 963], [136, 71]),
    ],
)
def test_unipc_timesteps_match_the_official_table(steps, shift, head, tail):
    schedule = unipc_schedule(steps, shift)
    assert schedule.timesteps.dtype == torch.int64
    assert schedule.steps == steps
    assert schedule.timesteps[: len(head)].tolist() == head
    assert schedule.timesteps[-len(tail) :].tolist() == tail


@pytest.mark.parametrize("steps, shift", [(50, 5.0), (40, 12.0), (40, 3.0), (7, 16.0)])
def test_unipc_grid_equals_diffusers_driven_on_the_official_sigmas(steps, shift):
    reference = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    reference.set_timesteps(sigmas=np.linspace(0.999, 0, steps + 1)[:-1])
    ours = unipc_schedule(steps, shift)
    assert torch.equal(ours.timesteps, reference.timesteps)
    # The official σ_max is 0.999 read back from fp32, diffusers gets the float64 0.999: ≤ 1 ulp.
    torch.testing.assert_close(ours.sigmas, reference.sigmas, rtol=0, atol=1.2e-7)
    assert ours.sigmas[-1] == 0 and ours.sigmas.dtype == torch.float32


def test_dpmpp_grid_starts_at_one_and_is_the_shifted_linspace():
    schedule = dpmpp_schedule(50, 5.0)
    expected = 5.0 * np.linspace(1, 0, 51)[:50] / (1 + 4.0 * np.linspace(1, 0, 51)[:50])
    assert schedule.sigmas[0] == 1.0 and schedule.timesteps[0] == 1000
    np.testing.assert_allclose(schedule.sigmas[:-1].numpy(), expected, rtol=1e-7)
    assert schedule.timesteps.tolist() == [int(v) for v in expected * 1000]
    assert schedule.sigmas[-1] == 0


@pytest.mark.parametrize("steps, shift", [(50, 5.0), (10, 3.0)])
def test_euler_grid_equals_diffusers_flow_match_euler(steps, shift):
    reference = FlowMatchEulerDiscreteScheduler(shift=shift)
    reference.set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1])
    ours = euler_schedule(steps, shift)
    torch.testing.assert_close(ours.sigmas, reference.sigmas, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.timesteps, reference.timesteps, rtol=1e-6, atol=0)
    assert ours.timesteps.dtype == torch.float32 and ours.timesteps[0] == 1000.0


def test_shift_is_identity_at_one_keeps_the_ends_and_moves_towards_noise():
    grid = np.linspace(1, 0, 11)
    np.testing.assert_array_equal(shift_sigmas(grid, 1.0), grid)
    shifted = shift_sigmas(grid, 5.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert (shifted[1:-1] > grid[1:-1]).all()
    assert shift_sigmas(np.array([0.5]), 3.0)[0] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "shift, boundary, high_steps", [(12.0, 0.875, 26), (5.0, 0.9, 15)]  # T2V-A14B, I2V-A14B
)
def test_a14b_expert_switch_counts(shift, boundary, high_steps):
    schedule = unipc_schedule(40, shift)
    plan = expert_plan(schedule, boundary)
    assert plan.count(Expert.HIGH_NOISE) == high_steps and len(plan) == 40
    assert expert_segments(schedule, boundary) == (
        ExpertSegment(Expert.HIGH_NOISE, 0, high_steps),
        ExpertSegment(Expert.LOW_NOISE, high_steps, 40),
    )
    assert all(schedule.timesteps[i] >= boundary * 1000 for i in range(high_steps))
    assert schedule.timesteps[high_steps] < boundary * 1000


def test_expert_segments_from_a_late_start_cover_the_rest():
    schedule = unipc_schedule(40, 12.0)
    assert expert_segments(schedule, 0.875, start=30) == (ExpertSegment(Expert.LOW_NOISE, 30, 40),)


def test_denoising_strength_sets_the_start_step():
    assert denoise_start(50, 1.0) == 0
    assert denoise_start(50, 0.5) == 25
    assert denoise_start(50, 0.0) == 50
    assert denoise_start(100, 0.57) == 43  # rounds; int(0.57 * 100) would give 56 steps


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_denoising_strength_outside_unit_interval_is_refused(bad):
    with pytest.raises(ModelInputError, match="denoising_strength"):
        denoise_start(50, bad)


@pytest.mark.parametrize(
    "steps, shift, word",
    [(0, 5.0, "steps"), (2.5, 5.0, "steps"), (10, 0.0, "shift"), (10, -1.0, "shift")],
)
def test_bad_steps_or_shift_are_refused(steps, shift, word):
    for solver in ("euler", "unipc", "dpm++"):
        with pytest.raises(ModelInputError, match=word):
            make_schedule(solver, steps, shift)


def test_unknown_solver_names_the_known_ones():
    with pytest.raises(ModelInputError, match=r"'dpm\+\+', 'euler', 'flow', 'unipc'"):
        make_schedule("ddim", 10, 5.0)


def test_expert_boundary_outside_unit_interval_is_refused():
    with pytest.raises(ModelInputError, match="boundary"):
        expert_plan(unipc_schedule(10, 5.0), 875)


def _diffsynth_wan_sigmas(steps: int, shift: float, strength: float) -> np.ndarray:
    """DiffSynth's `FlowMatchScheduler.set_timesteps_wan`, as published: σ_start = strength
    (σ_min 0, σ_max 1), σ = linspace(σ_start, 0, N+1)[:-1], σ' = s·σ/(1+(s−1)·σ)."""
    sigma = np.linspace(strength, 0.0, steps + 1)[:-1]
    return shift * sigma / (1 + (shift - 1) * sigma)


@pytest.mark.parametrize("solver", ["euler", "unipc", "dpm++"])
@pytest.mark.parametrize("strength", [0.3, 0.55, 0.8, 0.999])
def test_every_solver_walks_diffsynths_strength_grid_with_every_step(solver, strength):
    steps, shift = 20, 5.0
    schedule = make_schedule(solver, steps, shift, strength)
    assert schedule.steps == steps  # all steps, from σ = shift(strength)
    expected = _diffsynth_wan_sigmas(steps, shift, strength)
    assert np.allclose(schedule.sigmas[:-1].numpy(), expected, rtol=0, atol=1e-6)
    assert float(schedule.sigmas[-1]) == 0.0


@pytest.mark.parametrize("solver", ["euler", "unipc", "dpm++"])
def test_strength_one_is_each_solvers_own_grid(solver):
    assert torch.equal(make_schedule(solver, 12, 3.0, 1.0).sigmas, make_schedule(solver, 12, 3.0).sigmas)
