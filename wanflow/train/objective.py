"""The flow-matching training objective of Wan, as DiffSynth trains it.

A training schedule of 1000 shifted timesteps, descending from t = 1000 (pure noise); a draw picks
an index uniformly inside ``timestep_range`` (fractions of that index range: [0, 0.417] is the
noisiest 41.7 %, T2V-A14B's high-noise expert), noises the clean latent to it,
``x_t = (1 − σ)·x0 + σ·ε``, and the model's velocity is regressed on ``ε − x0`` with DiffSynth's
bell-shaped weight over t (mean 1, zero at t = 1000), or uniformly.

Every draw is a pure function of (seed, step, micro-batch): nothing here keeps random state, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from wanflow.train.timesteps import TRAIN_TIMESTEPS, index_range, training_sigmas, training_timesteps


@attrs.frozen(eq=False)
class TrainingSchedule:
    """σ and t of the 1000 training timesteps (descending) and each one's loss weight."""

    sigmas: torch.Tensor  # (1000,) fp32, σ_0 = 1
    timesteps: torch.Tensor  # (1000,) fp32, 1000·σ
    weights: torch.Tensor  # (1000,) fp32

    @classmethod
    def build(cls, shift: float, weighting: str = "diffsynth") -> TrainingSchedule:
        sigmas_t = torch.from_numpy(training_sigmas(shift))
        timesteps = torch.from_numpy(training_timesteps(shift))
        if weighting == "uniform":
            weights = torch.ones(TRAIN_TIMESTEPS)
        else:  # DiffSynth: y = exp(−2((t − 500)/1000)²), shifted to 0 at its minimum, mean 1
            y = torch.exp(-2 * ((timesteps - TRAIN_TIMESTEPS / 2) / TRAIN_TIMESTEPS) ** 2)
            y = y - y.min()
            weights = y * (TRAIN_TIMESTEPS / y.sum())
        return cls(sigmas_t, timesteps, weights)

    def index_range(self, fractions: tuple[float, float]) -> tuple[int, int]:
        """[first, stop) of the indices a range of fractions covers (DiffSynth's boundaries)."""
        return index_range(fractions)


def generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator for one draw, seeded from (seed, *stream): no state to save or restore."""
    mixed = seed
    for part in stream:
        mixed = (mixed * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


@attrs.frozen
class Draw:
    """One micro-batch's noise level and noise."""

    index: torch.Tensor  # (B,) int64 into the schedule
    sigma: torch.Tensor  # (B,) fp32
    t: torch.Tensor  # (B,) fp32
    weight: torch.Tensor  # (B,) fp32
    noise: torch.Tensor  # like x0, fp32


def draw(schedule: TrainingSchedule, x0: torch.Tensor, index_range: tuple[int, int], seed: int,
         stream: tuple[int, ...], positions: Sequence[int]) -> Draw:
    """A timestep index uniform in ``index_range`` and Gaussian noise for each sample of a batch.

    Sample ``positions[j]`` (its place in the global batch) draws from its own generator, seeded
    by (seed, *stream, position): the same sample gets the same draw whether the batch runs in one
    process or is split across several.
    """
    lo, hi = index_range
    indices, noises = [], []
    for j, position in enumerate(positions):
        gen = generator(seed, *stream, position)
        indices.append(torch.randint(lo, hi, (1,), generator=gen))
        noises.append(torch.randn(x0[j:j + 1].shape, generator=gen, dtype=torch.float32))
    index = torch.cat(indices)
    return Draw(index, schedule.sigmas[index], schedule.timesteps[index], schedule.weights[index],
                torch.cat(noises))


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(1 − σ)·x0 + σ·ε, σ per sample."""
    s = sigma.to(x0.device).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise.to(x0.device)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the model is trained to predict: ε − x0."""
    return noise.to(x0.device) - x0


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample in fp32, times the sample's timestep weight, averaged."""
    err = (pred.float() - target.float()) ** 2
    per_sample = err.flatten(1).mean(dim=1)
    return (per_sample * weight.to(per_sample.device)).mean()
