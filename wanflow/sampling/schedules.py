"""Noise schedules of the flow-matching samplers: the official Wan grids, DiffSynth's Euler grid and
the Wan-Fun authors' "Flow" grid.

Every schedule walks σ from (nearly) 1 down to 0, where x_σ = (1 − σ)·x0 + σ·ε. The model sees
the timestep t = 1000·σ; the official UniPC and DPM++ schedulers truncate it to int64 (computed
from the float64 σ, before the fp32 cast), DiffSynth's Euler keeps it as an fp32 float.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from wanflow.errors import ModelInputError

NUM_TRAIN_TIMESTEPS = 1000  # the Wan models are trained on t = 1000·σ
# The official UniPC σ_max: 1 − 1/1000 stored in an fp32 table and read back as a float.
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


@attrs.frozen(eq=False)
class Schedule:
    """The σ grid a sampler walks and the timestep the model sees at each of its steps."""

    sigmas: torch.Tensor  # (N+1,) fp32, strictly decreasing, ends at 0
    timesteps: torch.Tensor  # (N,) int64 (official UniPC/DPM++) or fp32 (Euler)

    def __attrs_post_init__(self) -> None:
        _check_schedule(self.sigmas, self.timesteps)

    @property
    def steps(self) -> int:
        """Number of model evaluations the full schedule takes."""
        return int(self.timesteps.shape[0])

    def sigma(self, index: int) -> float:
        """σ at grid point ``index`` as a Python float (solver coefficients are float64)."""
        return float(self.sigmas[index])


def _check_schedule(sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
    """Refuse grids the solvers cannot walk, before any model evaluation."""
    if sigmas.dtype != torch.float32 or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ModelInputError(
            f"schedule sigmas: need a 1-D fp32 tensor of N+1 ≥ 2 values, got {tuple(sigmas.shape)} "
            f"{sigmas.dtype}; build schedules with wanflow.sampling.make_schedule"
        )
    if timesteps.ndim != 1 or timesteps.shape[0] != sigmas.shape[0] - 1:
        raise ModelInputError(
            f"schedule timesteps: need N = {sigmas.shape[0] - 1} values (one per step), "
            f"got shape {tuple(timesteps.shape)}"
        )
    if float(sigmas[-1]) != 0.0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ModelInputError(
            f"schedule sigmas must decrease strictly and end at 0, got {sigmas.tolist()}"
        )
    if float(sigmas[0]) > 1.0:
        raise ModelInputError(f"schedule sigmas must lie in [0, 1], got σ_0 = {float(sigmas[0])}")


def check_steps_and_shift(steps: int, shift: float) -> None:
    """Refuse a step count or shift no schedule can be built from."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelInputError(f"[sampler].steps = {steps!r}: must be an integer ≥ 1 (e.g. 50)")
    if not math.isfinite(shift) or shift <= 0:
        raise ModelInputError(
            f"[sampler].shift = {shift!r}: must be a finite number > 0 "
            "(Wan uses 3.0–16.0; 1.0 = no shift)"
        )


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Warp σ towards the noisy end: σ' = sσ/(1+(s−1)σ) (SD3's time shift; s = 1: identity)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def _official_schedule(sigmas: np.ndarray) -> Schedule:
    """Official table layout: int64 timesteps from the float64 σ, then fp32 σ with a final 0."""
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)  # truncates
    full = np.concatenate([sigmas, [0.0]]).astype(np.float32)  # (N+1,)
    return Schedule(sigmas=torch.from_numpy(full), timesteps=timesteps)


def check_strength(strength: float) -> None:
    """Refuse a denoising strength no grid can start from."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ModelInputError(
            f"[sampler].denoising_strength = {strength!r}: a schedule needs a number in (0, 1] "
            "(1.0 = from pure noise; 0.5 = keep half of the input's structure)"
        )


def unipc_schedule(steps: int, shift: float, strength: float = 1.0) -> Schedule:
    """The official FlowUniPCMultistepScheduler grid: linspace(min(strength, 0.999), 0, N+1)[:-1],
    shifted, 0.

    ``strength`` < 1 starts the grid at σ = strength (DiffSynth's rule) and still takes all N
    steps; strength 1 is the official grid exactly (its σ_max is 0.999, not 1).
    """
    check_steps_and_shift(steps, shift)
    check_strength(strength)
    grid = np.linspace(min(float(strength), UNIPC_SIGMA_MAX), 0.0, steps + 1)[:-1]  # (N,) float64
    return _official_schedule(shift_sigmas(grid, shift))


def dpmpp_schedule(steps: int, shift: float, strength: float = 1.0) -> Schedule:
    """The official DPM++ grid (``get_sampling_sigmas``): linspace(strength, 0, N+1)[:N], shifted, 0."""
    check_steps_and_shift(steps, shift)
    check_strength(strength)
    grid = np.linspace(float(strength), 0.0, steps + 1)[:steps]  # (N,) float64
    return _official_schedule(shift_sigmas(grid, shift))


def euler_schedule(steps: int, shift: float, strength: float = 1.0) -> Schedule:
    """DiffSynth's Wan grid: fp32 linspace(strength, 0, N+1)[:-1], shifted, t = 1000·σ kept as fp32.

    This is ``FlowMatchScheduler.set_timesteps_wan`` (σ_start = strength, all N steps taken).
    """
    check_steps_and_shift(steps, shift)
    check_strength(strength)
    grid = torch.linspace(float(strength), 0.0, steps + 1, dtype=torch.float32)[:-1]  # (N,)
    sigmas = shift * grid / (1 + (shift - 1) * grid)
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    return Schedule(sigmas=torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps=timesteps)


def flow_schedule(steps: int, shift: float, strength: float = 1.0) -> Schedule:
    """The grid of VideoX-Fun's "Flow" sampler, the Wan-Fun and VACE-Fun authors' default: diffusers'
    ``FlowMatchEulerDiscreteScheduler`` as their configs build it (1000 training steps, the config's
    shift, no dynamic shifting).

    That scheduler keeps σ_min = s(1/1000) of its training table (s: the shift) and places the N
    steps evenly in t between 1000 and 1000·σ_min before shifting them again: σ = s(linspace(1,
    s(0.001), N)), then 0; t = 1000·σ in fp32. The last step therefore jumps from a small σ to 0,
    where DiffSynth's grid walks s(linspace(1, 0, N+1)[:-1]): same shift, other intermediate σ.
    ``strength`` < 1 starts the even placement at ``strength`` instead of 1 (DiffSynth's rule,
    applied to this grid) and still takes all N steps.
    """
    check_steps_and_shift(steps, shift)
    check_strength(strength)
    # σ_min as the scheduler computes it: its fp32 training table's last σ (1/1000), shifted in fp32.
    table_min = torch.tensor(1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    sigma_min = float(shift * table_min / (1 + (shift - 1) * table_min))
    t = np.linspace(float(strength) * NUM_TRAIN_TIMESTEPS, sigma_min * NUM_TRAIN_TIMESTEPS, steps)  # float64
    sigmas = torch.from_numpy(shift_sigmas(t / NUM_TRAIN_TIMESTEPS, shift)).to(torch.float32)
    return Schedule(sigmas=torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps=sigmas * NUM_TRAIN_TIMESTEPS)


def denoise_start(steps: int, denoising_strength: float) -> int:
    """``strength_schedule = "truncate"`` (diffusers' img2img rule): the first step to run on the
    strength-1 grid; round(strength·N) steps run, the rest are skipped.

    Strength 1 starts at step 0 (from pure noise); 0 runs no step and returns the input.
    """
    if not isinstance(denoising_strength, (int, float)) or not 0.0 <= denoising_strength <= 1.0:
        raise ModelInputError(
            f"[sampler].denoising_strength = {denoising_strength!r}: must be a number in [0, 1] "
            "(1.0 = from pure noise; 0.5 = keep half of the input's structure)"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ModelInputError(f"[sampler].steps = {steps!r}: must be an integer ≥ 1 (e.g. 50)")
    return steps - round(denoising_strength * steps)


def half_log_snr(sigma: float) -> float:
    """λ(σ) = log(α/σ) with α = 1 − σ: the time variable of the exponential-integrator solvers."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log1p(-sigma) - math.log(sigma)
