"""The Wan2.2 A14B expert switch: the high-noise expert above a timestep boundary, low-noise below.

The plan is a pure function of the schedule, so a runner knows ahead which expert each step needs
and keeps only one resident at a time (run one segment, swap, run the next).
"""

from __future__ import annotations

import enum
import itertools

import attrs
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.schedules import NUM_TRAIN_TIMESTEPS, Schedule
from wanflow.sampling.state import ModelFn


class Expert(enum.Enum):
    """The two A14B experts, named as the official checkpoint folders."""

    HIGH_NOISE = "high_noise_model"
    LOW_NOISE = "low_noise_model"


@attrs.frozen
class ExpertGuidance:
    """CFG scale per expert, by name: the official tuple is (low, high), diffusers' the reverse."""

    high_noise: float
    low_noise: float

    @classmethod
    def from_official(cls, guide_scale: float | tuple[float, float]) -> ExpertGuidance:
        """Read the official ``sample_guide_scale``: a float for both, or a (low, high) pair."""
        if isinstance(guide_scale, (int, float)):
            return cls(high_noise=float(guide_scale), low_noise=float(guide_scale))
        if len(guide_scale) != 2:
            raise ModelInputError(
                f"guide scale {guide_scale!r}: give one number or a (low_noise, high_noise) pair"
            )
        low, high = guide_scale
        return cls(high_noise=float(high), low_noise=float(low))

    def scale(self, expert: Expert) -> float:
        """The scale of one expert."""
        return self.high_noise if expert is Expert.HIGH_NOISE else self.low_noise


@attrs.frozen
class ExpertSegment:
    """A run of consecutive steps [start, stop) that use one expert."""

    expert: Expert
    start: int
    stop: int


def check_boundary(boundary: float) -> None:
    """Refuse a boundary outside (0, 1] (it is a fraction of the 1000 training timesteps)."""
    number = isinstance(boundary, (int, float)) and not isinstance(boundary, bool)
    if not number or not 0 < boundary <= 1:
        raise ModelInputError(
            f"boundary = {boundary!r}: must be a number in (0, 1], a fraction of the 1000 training "
            "timesteps (T2V-A14B uses 0.875, I2V-A14B 0.9)"
        )


def expert_for(t: float | torch.Tensor, boundary: float) -> Expert:
    """The official rule: the high-noise expert for t ≥ boundary·1000, the low-noise one below."""
    return Expert.HIGH_NOISE if float(t) >= boundary * NUM_TRAIN_TIMESTEPS else Expert.LOW_NOISE


def expert_plan(schedule: Schedule, boundary: float, start: int = 0) -> tuple[Expert, ...]:
    """Which expert each step from ``start`` to the end uses."""
    check_boundary(boundary)
    return tuple(expert_for(t, boundary) for t in schedule.timesteps[start:].tolist())


def expert_segments(
    schedule: Schedule, boundary: float, start: int = 0
) -> tuple[ExpertSegment, ...]:
    """The plan as runs of one expert each, in step order (at most one swap: high, then low)."""
    segments, index = [], start
    for expert, run in itertools.groupby(expert_plan(schedule, boundary, start)):
        length = len(list(run))
        segments.append(ExpertSegment(expert, index, index + length))
        index += length
    return tuple(segments)


def expert_model(high_noise: ModelFn, low_noise: ModelFn, boundary: float) -> ModelFn:
    """One model function that asks the expert owning the step's timestep (each already guided)."""
    check_boundary(boundary)

    def routed(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fn = high_noise if expert_for(t, boundary) is Expert.HIGH_NOISE else low_noise
        return fn(x, t)

    return routed
