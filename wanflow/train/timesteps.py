"""The 1000 training timesteps of the flow-matching objective, torch-free.

Both the train loop (``wanflow.train.objective.TrainingSchedule``, which routes each draw to an
A14B expert by its t) and validation (which refuses an expert whose side of the boundary holds no
timestep of ``timestep_range``, before any model loads) read this one table, so the refusal and
the loop agree on every t to the bit.
"""

from __future__ import annotations

import numpy as np

TRAIN_TIMESTEPS = 1000


def training_sigmas(shift: float) -> np.ndarray:
    """(1000,) fp32 σ, descending from 1: ``linspace(1, 0, 1001)[:-1]`` warped by the time shift
    σ' = sσ/(1+(s−1)σ) in float64 (``sampling.schedules.shift_sigmas``), then rounded to fp32."""
    sigmas = np.linspace(1.0, 0.0, TRAIN_TIMESTEPS + 1)[:-1]
    return (shift * sigmas / (1.0 + (shift - 1.0) * sigmas)).astype(np.float32)


def training_timesteps(shift: float) -> np.ndarray:
    """(1000,) fp32 t = 1000·σ, multiplied in fp32 as the loop's tensors are."""
    return training_sigmas(shift) * np.float32(TRAIN_TIMESTEPS)


def index_range(fractions: tuple[float, float]) -> tuple[int, int]:
    """[first, stop) of the indices a range of fractions covers (DiffSynth's boundaries); never empty."""
    lo, hi = int(fractions[0] * TRAIN_TIMESTEPS), int(fractions[1] * TRAIN_TIMESTEPS)
    return lo, max(hi, lo + 1)
