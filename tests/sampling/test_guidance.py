"""Classifier-free guidance wrappers and per-expert guidance for the A14B models."""

from __future__ import annotations

import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling import (
    Expert,
    ExpertGuidance,
    batched_cfg_model,
    cfg_model,
    expert_model,
    expert_plan,
    make_schedule,
    sample,
)


def test_cfg_one_skips_the_unconditional_pass(latent, toy):
    cond, uncond = toy(seed=1), toy(seed=2)
    sample("unipc", cfg_model(cond, uncond, 1.0), latent, make_schedule("unipc", 6, 5.0))
    assert len(cond.calls) == 6 and uncond.calls == []


def test_cfg_above_one_calls_both_and_mixes_them(latent, toy):
    cond, uncond = toy(seed=1), toy(seed=2)
    guided = cfg_model(cond, uncond, 5.0)
    t = torch.tensor(900)
    out = guided(latent, t)
    expected = uncond(latent, t) + 5.0 * (cond(latent, t) - uncond(latent, t))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    sample("euler", guided, latent, make_schedule("euler", 4, 5.0))
    assert len(cond.calls) == 1 + 1 + 4 and len(uncond.calls) == 1 + 2 + 4


def test_batched_guidance_equals_two_calls_in_one_forward(latent, toy):
    cond, uncond = toy(seed=1), toy(seed=2)
    calls: list[int] = []

    def pair(x2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x2.shape[0])
        half = x2.shape[0] // 2
        return torch.cat([cond(x2[:half], t), uncond(x2[half:], t)])

    schedule = make_schedule("dpm++", 5, 5.0)
    batched = sample("dpm++", batched_cfg_model(pair, 4.0), latent, schedule).x
    separate = sample("dpm++", cfg_model(toy(seed=1), toy(seed=2), 4.0), latent, schedule).x
    assert calls == [2 * latent.shape[0]] * 5
    assert torch.equal(batched, separate)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), "5", True])
def test_bad_cfg_is_refused(bad, toy):
    with pytest.raises(ModelInputError, match="cfg"):
        cfg_model(toy(), toy(), bad)


def test_official_guide_scale_pair_is_low_then_high():
    scales = ExpertGuidance.from_official((3.0, 4.0))  # T2V-A14B
    assert scales.scale(Expert.HIGH_NOISE) == 4.0 and scales.scale(Expert.LOW_NOISE) == 3.0
    assert ExpertGuidance.from_official(3.5) == ExpertGuidance(high_noise=3.5, low_noise=3.5)


def test_each_expert_runs_with_its_own_guidance(latent, toy):
    schedule = make_schedule("unipc", 40, 12.0)
    scales = ExpertGuidance.from_official((3.0, 4.0))
    hc, hu, lc, lu = toy(seed=1), toy(seed=2), toy(seed=3), toy(seed=4)
    high = cfg_model(hc, hu, scales.high_noise)
    low = cfg_model(lc, lu, scales.low_noise)
    t_high, t_low = schedule.timesteps[0], schedule.timesteps[-1]
    routed = expert_model(high, low, 0.875)
    torch.testing.assert_close(routed(latent, t_high), high(latent, t_high), rtol=0, atol=0)
    torch.testing.assert_close(routed(latent, t_low), low(latent, t_low), rtol=0, atol=0)
    for fn in (hc, hu, lc, lu):
        fn.calls.clear()
    sample("unipc", routed, latent, schedule)
    plan = expert_plan(schedule, 0.875)
    high_ts = [float(t) for t, e in zip(schedule.timesteps, plan) if e is Expert.HIGH_NOISE]
    assert hc.calls == hu.calls == high_ts and len(high_ts) == 26
    assert len(lc.calls) == len(lu.calls) == 14 and max(lc.calls) < 875
