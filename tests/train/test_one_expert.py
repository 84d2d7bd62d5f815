"""One A14B expert trained alone: every draw on its side of the boundary, the two-expert run's draws."""

from __future__ import annotations

import pytest
import torch

from wanflow.train.loop import Expert, Settings, Trainer
from wanflow.train.objective import draw, generator
from wanflow.train.order import batch_order

BOUNDARY = 875.0  # wan2.2-t2v-a14b's sampler.boundary 0.875, as a timestep


def _expert(role: str) -> Expert:
    model = torch.nn.Linear(1, 1)
    return Expert(role, model, t_min=BOUNDARY) if role == "dit_high_noise" else Expert(role, model, t_max=BOUNDARY)


def _trainer(roles: tuple[str, ...], timestep_range=(0.0, 1.0)) -> Trainer:
    settings = Settings(steps=1, timestep_range=timestep_range)
    return Trainer([_expert(r) for r in roles], settings, batch_order(["", ""], (0, 1), 1, 0), lambda _: None)


@pytest.mark.parametrize("timestep_range", [(0.0, 1.0), (0.1, 0.95)])
def test_one_expert_draws_what_the_two_expert_run_routes_to_it_and_only_its_side(timestep_range):
    both = _trainer(("dit_high_noise", "dit_low_noise"), timestep_range)
    alone = {r: _trainer((r,), timestep_range) for r in ("dit_high_noise", "dit_low_noise")}
    x0 = torch.zeros(1, 2)
    lo, hi = both.range
    routed = set()
    for step in range(200):
        stream = (step, 0)
        expert, side = both._route(generator(0, *stream))
        routed.add(expert.role)
        one = alone[expert.role]
        own, own_side = one._route(generator(0, *stream))
        assert own.role == expert.role and own_side == side
        d2, d1 = draw(both.schedule, x0, side, 0, stream, (0,)), draw(one.schedule, x0, own_side, 0, stream, (0,))
        assert torch.equal(d1.index, d2.index) and torch.equal(d1.noise, d2.noise)
    assert routed == {"dit_high_noise", "dit_low_noise"}
    for role, one in alone.items():
        _, (first, stop) = one._route(generator(0, 0))
        ts = one.schedule.timesteps[first:stop]
        assert lo <= first and stop <= hi  # timestep_range still bounds the draws
        high = role == "dit_high_noise"
        assert bool((ts >= BOUNDARY).all()) if high else bool((ts < BOUNDARY).all())
        # the whole side: the neighbouring index inside the range belongs to the other expert
        edge = stop if high and stop < hi else first - 1
        if lo <= edge < hi and edge not in range(first, stop):
            t = float(one.schedule.timesteps[edge])
            assert (t < BOUNDARY) if high else (t >= BOUNDARY)


def test_a_timestep_range_off_the_expert_s_side_is_refused_before_training():
    both = _trainer(("dit_high_noise", "dit_low_noise"))
    lows = [i for i, t in enumerate(both.schedule.timesteps.tolist()) if t < BOUNDARY]
    frac = (min(lows) / 1000, (max(lows) + 1) / 1000)  # the low-noise side alone
    assert _trainer(("dit_low_noise",), frac)
    with pytest.raises(ValueError, match="dit_high_noise denoises no noise level"):
        _trainer(("dit_high_noise",), frac)
