"""The training objective against DiffSynth's published formulas (diffsynth-wan-facts.md §3, §5)."""

from __future__ import annotations

import math

import torch

from wanflow.train.objective import (
    TrainingSchedule,
    draw,
    noised,
    velocity_target,
    weighted_mse,
)


def test_schedule_is_diffsynths_shifted_grid_with_its_bell_weights():
    s = TrainingSchedule.build(5.0)
    sigma = [5 * u / (1 + 4 * u) for u in (1.0, 1 - 1 / 1000, 0.5)]
    assert torch.allclose(s.sigmas[[0, 1, 500]], torch.tensor(sigma), atol=1e-6)
    assert torch.allclose(s.timesteps, s.sigmas * 1000)
    # every σ is the float64 shift of DiffSynth's grid rounded once to fp32; t is fp32 1000·σ
    exact = torch.tensor([5 * u / (1 + 4 * u) for u in (1 - i / 1000 for i in range(1000))], dtype=torch.float64)
    assert torch.equal(s.sigmas, exact.float()) and torch.equal(s.timesteps, s.sigmas * 1000)
    assert abs(float(s.weights.mean()) - 1.0) < 1e-5  # mean 1
    assert float(s.weights[0]) == 0.0  # zero at t = 1000
    peak = int(s.weights.argmax())
    assert abs(float(s.timesteps[peak]) - 500) < 3 and abs(float(s.weights.max()) - 2.076) < 0.01
    assert torch.equal(TrainingSchedule.build(5.0, "uniform").weights, torch.ones(1000))


def test_a_boundary_fraction_is_an_index_fraction_of_the_descending_schedule():
    s = TrainingSchedule.build(5.0)
    lo, hi = s.index_range((0.0, 0.417))  # T2V-A14B's high-noise expert: t from 1000 down to 875
    assert (lo, hi) == (0, 417)
    assert float(s.timesteps[hi - 1]) >= 875 > float(s.timesteps[hi])
    lo, hi = s.index_range((0.358, 1.0))  # I2V-A14B's low-noise expert starts at t = 900
    assert float(s.timesteps[lo]) <= 900 < float(s.timesteps[lo - 1])


def test_each_sample_draws_from_its_own_position_so_a_split_batch_draws_the_same():
    s = TrainingSchedule.build(5.0)
    x0 = torch.zeros(3, 2, 1, 2, 2)
    whole = draw(s, x0, (0, 1000), seed=7, stream=(4, 1), positions=(0, 1, 2))
    first = draw(s, x0[:2], (0, 1000), seed=7, stream=(4, 1), positions=(0, 1))
    last = draw(s, x0[2:], (0, 1000), seed=7, stream=(4, 1), positions=(2,))
    assert torch.equal(whole.noise, torch.cat([first.noise, last.noise]))
    assert torch.equal(whole.index, torch.cat([first.index, last.index]))
    other = draw(s, x0, (0, 1000), seed=7, stream=(5, 1), positions=(0, 1, 2))
    assert not torch.equal(whole.noise, other.noise)  # another step, other draws
    inside = draw(s, torch.zeros(64, 1), (100, 110), seed=0, stream=(0,), positions=range(64))
    assert int(inside.index.min()) >= 100 and int(inside.index.max()) < 110


def test_loss_is_the_weighted_mse_of_the_velocity():
    x0, noise = torch.randn(2, 4), torch.randn(2, 4)
    sigma = torch.tensor([0.25, 0.75])
    assert torch.allclose(noised(x0, noise, sigma)[1], 0.25 * x0[1] + 0.75 * noise[1])
    target = velocity_target(x0, noise)
    pred = target + torch.tensor([[1.0], [2.0]])  # errors of 1 and 2 everywhere
    loss = weighted_mse(pred, target, torch.tensor([1.0, 0.5]))
    assert math.isclose(float(loss), (1 * 1.0 + 4 * 0.5) / 2, rel_tol=1e-6)
