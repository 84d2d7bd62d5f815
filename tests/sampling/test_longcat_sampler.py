"""LongCat-Video's sampler: its σ list, the enhance_hf tail, the distilled list, CFG-Zero* at its
defaults, the output sign, and DiffSynth's settings, each against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling import euler_schedule, euler_step, start_state
from wanflow.sampling.guidance import Passes, guided_model
from wanflow.sampling.longcat import (
    DIFFSYNTH,
    LONGCAT,
    LONGCAT_DISTILLED,
    cond_latent_frames,
    flow_velocity,
    longcat_schedule,
    schedule_for,
    scheduler_shift,
    velocity_model,
)

#: 1 − k·0.999/49: LongCat's 50 σ before the tail (shift 1).
STEP = 0.999 / 49


def test_the_sigma_list_is_linspace_from_1_to_a_thousandth():
    schedule = longcat_schedule(50, 1.0, enhance_hf=False)
    expected = 1.0 - STEP * np.arange(50)
    np.testing.assert_allclose(schedule.sigmas[:-1].numpy(), expected, atol=1e-6, rtol=0)
    assert float(schedule.sigmas[-1]) == 0.0 and float(schedule.sigmas[-2]) == pytest.approx(0.001, abs=1e-7)
    assert torch.equal(schedule.timesteps, schedule.sigmas[:-1] * 1000)  # fp32 timesteps, not truncated


def test_enhance_hf_keeps_the_steps_above_500_and_appends_ten_uniform_ones():
    schedule = longcat_schedule(50, 1.0)  # 1 − 24·STEP = 0.5107 is the last σ above one half
    assert schedule.steps == 25 + 10
    np.testing.assert_allclose(schedule.timesteps[:25].numpy(), 1000 * (1.0 - STEP * np.arange(25)), rtol=0, atol=1e-3)
    assert schedule.timesteps[25:].tolist() == [500.0, 450.0, 400.0, 350.0, 300.0, 250.0, 200.0, 150.0, 100.0, 50.0]
    assert torch.equal(schedule.sigmas, torch.cat([schedule.timesteps / 1000, torch.zeros(1)]))


def test_the_shift_warps_the_list_before_the_tail_is_cut():
    schedule = longcat_schedule(50, 3.0)  # σ' = 3σ/(1 + 2σ) > 0.5 where σ > 0.25: k ≤ 36
    sigma = 1.0 - STEP * np.arange(37)
    np.testing.assert_allclose(schedule.sigmas[:37].numpy(), 3 * sigma / (1 + 2 * sigma), atol=1e-6, rtol=0)
    assert schedule.steps == 37 + 10 and float(schedule.timesteps[37]) == 500.0


def test_the_distilled_list_takes_16_of_the_50_distillation_timesteps():
    schedule = longcat_schedule(16, 1.0, distill=True, enhance_hf=False)
    expected = [1.0, 0.94, 0.88, 0.82, 0.76, 0.70, 0.64, 0.58, 0.50, 0.44, 0.38, 0.32, 0.26, 0.20, 0.14, 0.08, 0.0]
    np.testing.assert_allclose(schedule.sigmas.numpy(), expected, atol=1e-7, rtol=0)
    with pytest.raises(ModelInputError, match="exclude each other"):
        longcat_schedule(16, 1.0, distill=True)
    with pytest.raises(ModelInputError, match="at most 50"):
        longcat_schedule(60, 1.0, distill=True, enhance_hf=False)


def test_the_dit_output_is_x0_minus_noise_and_becomes_the_flow_velocity():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    sigma = 0.7
    x = (1 - sigma) * x0 + sigma * noise
    exact = x0 - noise  # what a perfect LongCat DiT predicts at any σ
    assert torch.equal(flow_velocity(exact), noise - x0)
    torch.testing.assert_close(x + (0.0 - sigma) * flow_velocity(exact), x0, atol=1e-6, rtol=0)


def test_a_whole_run_with_the_exact_prediction_lands_on_the_data():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    model = velocity_model(lambda x, t: x0 - noise)  # raw DiT outputs, LongCat's sign
    schedule = longcat_schedule(50, 1.0)
    state = start_state(noise)
    for _ in range(schedule.steps):
        state = euler_step(state, model, schedule)
    torch.testing.assert_close(state.x, x0, atol=1e-5, rtol=0)


def test_cfg_zero_star_at_the_defaults_matches_the_published_formula_per_sample():
    # sample 0: v_u = (1, 0), v_c = (2, 2): s* = 2, guided = (2, 0) + 4·((2, 2) − (2, 0)) = (2, 8)
    # sample 1: v_u = (0, 2), v_c = (1, 1): s* = 2/4,  guided = (0, 1) + 4·((1, 1) − (0, 1)) = (4, 1)
    uncond = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1, 1)
    cond = torch.tensor([[2.0, 2.0], [1.0, 1.0]]).view(2, 2, 1, 1, 1)
    passes = Passes(cond=velocity_model(lambda x, t: cond), uncond=velocity_model(lambda x, t: uncond))
    assert LONGCAT.guidance.cfg == 4.0 and LONGCAT.guidance.zero_star and LONGCAT.guidance.zero_init_steps == 0
    guided = guided_model(passes, LONGCAT.guidance, longcat_schedule(50, 1.0))
    v = guided(torch.zeros(2, 2, 1, 1, 1), torch.tensor(1000.0))
    expected = -torch.tensor([[2.0, 8.0], [4.0, 1.0]]).view(2, 2, 1, 1, 1)  # negated: a velocity
    torch.testing.assert_close(v, expected, atol=1e-6, rtol=0)


def test_diffsynth_runs_plain_cfg_2_on_its_euler_grid_at_shift_1():
    assert DIFFSYNTH.guidance.cfg == 2.0 and not DIFFSYNTH.guidance.zero_star
    assert (DIFFSYNTH.steps, DIFFSYNTH.frames, DIFFSYNTH.cond_frames, DIFFSYNTH.cond_encoding) == (50, 93, 17, "mean")
    schedule = schedule_for(DIFFSYNTH, released_shift=7.0)  # DiffSynth sets its own shift: 1
    np.testing.assert_allclose(schedule.sigmas.numpy(), np.append(np.linspace(1, 0, 51)[:-1], 0.0), atol=1e-6)
    assert torch.equal(schedule.sigmas, euler_schedule(50, 1.0).sigmas)


def test_longcat_presets_take_the_released_shift():
    assert (LONGCAT.steps, LONGCAT.frames, LONGCAT.cond_frames, LONGCAT.cond_encoding) == (50, 93, 13, "sample")
    assert torch.equal(schedule_for(LONGCAT, 3.0).sigmas, longcat_schedule(50, 3.0).sigmas)
    distilled = schedule_for(LONGCAT_DISTILLED, 1.0)
    assert distilled.steps == 16 and LONGCAT_DISTILLED.guidance.cfg == 1.0
    assert LONGCAT_DISTILLED.lora == "cfg_step_lora.safetensors"


def test_the_scheduler_config_gives_the_shift_and_refuses_what_the_schedule_does_not_model():
    assert scheduler_shift({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0}, "s.json") == 7.0
    assert scheduler_shift({"num_train_timesteps": 1000}, "s.json") == 1.0  # the class default
    with pytest.raises(ModelInputError, match="use_dynamic_shifting"):
        scheduler_shift({"shift": 3.0, "use_dynamic_shifting": True}, "s.json")
    with pytest.raises(ModelInputError, match="shift = -1"):
        scheduler_shift({"shift": -1}, "s.json")


def test_conditioning_frames_map_to_latent_frames():
    assert cond_latent_frames(13) == 4 and cond_latent_frames(17) == 5 and cond_latent_frames(1) == 1
    with pytest.raises(ModelInputError, match="4n\\+1"):
        cond_latent_frames(12)
