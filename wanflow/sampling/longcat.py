"""LongCat-Video's published sampler as pure functions and data, and DiffSynth's settings for it.

LongCat's pipeline (meituan-longcat/LongCat-Video ``pipeline_longcat_video.py``) samples with
flow-matching Euler over its own σ list: ``linspace(1, 0.001, N)`` through the scheduler's shift,
then (``enhance_hf``, on by default for video continuation) the steps above t = 500 are kept and
ten uniform steps 500, 450, … 50 replace the rest. Guidance is CFG-Zero* (Fan et al. 2025) at
scale 4 with no zero-init steps. A 16-step distilled schedule serves its ``cfg_step_lora``.

The DiT predicts x0 − noise, the opposite sign of wanflow's flow velocity (ε − x0):
``flow_velocity`` is the one place that converts. CFG-Zero* gives the same result on either
sign (s* = ⟨v_c, v_u⟩/‖v_u‖² is unchanged when both flip, and the blend is linear), so guidance
runs on velocities like every other family's (``wanflow.sampling.guidance``).

In video continuation only the frames after the conditioning are denoised: the solver's latent
and the model function cover just those frames (as the DiT's KV-cache path does by construction),
so CFG-Zero*'s s* is taken over them alone, as in LongCat's default (KV-cache) loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import attrs
import numpy as np
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.euler import euler_step
from wanflow.sampling.guidance import Guidance
from wanflow.sampling.registry import Solver
from wanflow.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    Schedule,
    check_steps_and_shift,
    euler_schedule,
)
from wanflow.sampling.state import ModelFn

#: The last σ of LongCat's list (its first is 1).
SIGMA_MIN = 0.001
#: ``enhance_hf``: timesteps above this are kept, and TAIL_STEPS uniform ones from it to 0 replace the rest.
TAIL_START = 500.0
TAIL_STEPS = 10
#: The distilled schedule picks its steps from this many evenly spaced timesteps (1000/50 apart).
DISTILL_GRID = 50

ScheduleKind = Literal["longcat", "longcat-distill", "euler"]


# ----------------------------------------------------------------------------- the sign


def flow_velocity(output: torch.Tensor) -> torch.Tensor:
    """The LongCat DiT's output (x0 − noise) as wanflow's flow velocity (ε − x0), in fp32."""
    return -output.float()


def velocity_model(dit_fn: ModelFn) -> ModelFn:
    """A solver's model function from one returning the LongCat DiT's raw output."""
    return lambda x, t: flow_velocity(dit_fn(x, t))


# ----------------------------------------------------------------------------- σ lists


def base_sigmas(steps: int) -> torch.Tensor:
    """LongCat's list before the shift: fp32 linspace(1, 0.001, N) (N values, no final 0)."""
    return torch.linspace(1.0, SIGMA_MIN, steps, dtype=torch.float32)


def distill_sigmas(steps: int) -> torch.Tensor:
    """The distilled list: of the timesteps 1000, 980, … 20, those at ⌊linspace(0, 50, N)⌋, / 1000."""
    if steps > DISTILL_GRID:
        raise ModelInputError(f"[sampler].steps = {steps}: the distilled schedule takes at most {DISTILL_GRID}")
    grid = torch.arange(DISTILL_GRID, 0, -1, dtype=torch.float32) * (NUM_TRAIN_TIMESTEPS // DISTILL_GRID)
    picks = np.floor(np.linspace(0, DISTILL_GRID, num=steps, endpoint=False)).astype(np.int64)
    return grid[torch.from_numpy(picks)] / NUM_TRAIN_TIMESTEPS


def longcat_schedule(steps: int, shift: float, *, distill: bool = False, enhance_hf: bool = True) -> Schedule:
    """LongCat's Euler grid: its σ list shifted by σ' = sσ/(1+(s−1)σ) in fp32, t = 1000·σ', then
    (``enhance_hf``) the high-frequency tail. With the tail the step count is not ``steps``: 50
    becomes 25 kept + 10 tail = 35 model evaluations at shift 1."""
    check_steps_and_shift(steps, shift)
    if distill and enhance_hf:
        raise ModelInputError("the distilled schedule and enhance_hf exclude each other (LongCat refuses both)")
    sigmas = distill_sigmas(steps) if distill else base_sigmas(steps)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)  # fp32, as the scheduler's numpy fp32
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    if enhance_hf:
        return with_tail(timesteps)
    return Schedule(sigmas=torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps=timesteps)


def refine_schedule(steps: int, shift: float, strength: float) -> Schedule:
    """The authors' refinement grid (``generate_refine``): LongCat's σ list of ``steps`` at the
    release's shift, no tail, cut below ``strength`` (their t_thresh) and started at it:
    t = 1000·strength, then the grid's timesteps below it; σ = t / 1000 and a final 0."""
    if not 0.0 < strength <= 1.0:
        raise ModelInputError(f"refinement strength {strength}: must be in (0, 1]")
    start = torch.tensor(strength * NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
    grid = longcat_schedule(steps, shift, enhance_hf=False).timesteps
    timesteps = torch.cat([start.reshape(1), grid[grid < start]])
    return Schedule(sigmas=torch.cat([timesteps / NUM_TRAIN_TIMESTEPS, timesteps.new_zeros(1)]), timesteps=timesteps)


def with_tail(timesteps: torch.Tensor) -> Schedule:
    """``enhance_hf``: the timesteps above 500, then 500, 450, … 50; σ = t / 1000 and a final 0."""
    tail = torch.from_numpy(np.linspace(TAIL_START, 0.0, TAIL_STEPS, endpoint=False, dtype=np.float32))
    timesteps = torch.cat([timesteps[timesteps > TAIL_START], tail])
    sigmas = torch.cat([timesteps / NUM_TRAIN_TIMESTEPS, timesteps.new_zeros(1)])
    return Schedule(sigmas=sigmas, timesteps=timesteps)


def scheduler_shift(doc: Mapping[str, object], source: str) -> float:
    """The shift of a released ``scheduler/scheduler_config.json`` (a diffusers
    FlowMatchEulerDiscreteScheduler config), refusing settings LongCat's schedule does not model."""
    unmodelled = [k for k in ("use_dynamic_shifting", "invert_sigmas", "shift_terminal", "use_karras_sigmas",
                              "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling") if doc.get(k)]
    if unmodelled:
        raise ModelInputError(f"{source}: sets {unmodelled}, which LongCat's schedule does not use.")
    shift = doc.get("shift", 1.0)  # the scheduler class's own default
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ModelInputError(f"{source}: shift = {shift!r}: must be a finite number > 0.")
    if doc.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS) != NUM_TRAIN_TIMESTEPS:
        raise ModelInputError(f"{source}: num_train_timesteps = {doc['num_train_timesteps']!r}; LongCat uses 1000.")
    return float(shift)


def authors_grid(steps: int, shift: float, strength: float = 1.0, *, continuation: bool = False) -> Schedule:
    """The registered solver's grid: LongCat's σ list at the release's shift, with the
    ``enhance_hf`` tail for a video continuation (``generate_vc``'s default) and without it for
    text-to-video (``generate_t2v`` has no tail); the sampler always starts from noise."""
    if strength != 1.0:
        raise ModelInputError(f"denoising_strength = {strength}: LongCat's sampler starts from noise; use 1.0")
    return longcat_schedule(steps, shift, enhance_hf=continuation)


def distilled_grid(steps: int, shift: float, strength: float = 1.0) -> Schedule:
    """The distilled solver's grid: ``longcat_schedule(distill=True)``, no tail (the authors refuse
    both); the sampler always starts from noise."""
    if strength != 1.0:
        raise ModelInputError(f"denoising_strength = {strength}: LongCat's sampler starts from noise; use 1.0")
    return longcat_schedule(steps, shift, distill=True, enhance_hf=False)


#: The authors' sampler as a solver (``[sampler].solver = "longcat"``): Euler over LongCat's σ list
#: (and tail, for a continuation). Its guidance (CFG-Zero* at 4) is the recipe's ``cfg`` and ``cfg_zero_star``.
SOLVER = Solver("longcat", euler_step, authors_grid)
#: The distilled run (``"longcat-distill"``): Euler over the distilled list, for the cfg_step LoRA.
DISTILLED_SOLVER = Solver("longcat-distill", euler_step, distilled_grid)


def authors_schedule(solver: str, steps: int, shift: float, *, continuation: bool) -> Schedule:
    """The grid one of the authors' solvers walks for a job: the distilled list, or their σ list
    with the tail only when the clip continues frames (as ``generate_vc`` adds it and
    ``generate_t2v`` does not)."""
    if solver == DISTILLED_SOLVER.name:
        return distilled_grid(steps, shift)
    return authors_grid(steps, shift, continuation=continuation)


# ----------------------------------------------------------------------------- presets


@attrs.frozen
class LongCatSampling:
    """One published way of sampling LongCat-Video, as data."""

    steps: int  # requested steps (the enhance_hf tail changes how many run)
    guidance: Guidance
    schedule: ScheduleKind
    shift: float | None  # None: the released scheduler_config.json's (``scheduler_shift``)
    enhance_hf: bool
    frames: int  # video frames made, the conditioning ones included
    cond_frames: int  # the input video's last frames that condition the continuation
    cond_encoding: Literal["sample", "mean"]  # VAE posterior sample (LongCat) or its mean (DiffSynth):
    #   a recipe's [inputs].longcat_cond_latents (steps/longcat_posterior.py)
    lora: str | None = None  # file under the release's lora/ this schedule was distilled for


#: LongCat's ``generate_vc`` defaults (``run_demo_video_continuation.py``).
LONGCAT = LongCatSampling(steps=50, guidance=Guidance(cfg=4.0, zero_star=True), schedule="longcat", shift=None,
                          enhance_hf=True, frames=93, cond_frames=13, cond_encoding="sample")
#: The distilled variant: 16 steps, no guidance, with the cfg_step LoRA.
LONGCAT_DISTILLED = LongCatSampling(steps=16, guidance=Guidance(cfg=1.0), schedule="longcat-distill", shift=None,
                                    enhance_hf=False, frames=93, cond_frames=13, cond_encoding="sample",
                                    lora="cfg_step_lora.safetensors")
#: DiffSynth-Studio's example (examples/wanvideo/model_inference/LongCat-Video.py): plain CFG 2,
#: its Wan Euler grid at shift 1, continuation from the last 17 frames.
DIFFSYNTH = LongCatSampling(steps=50, guidance=Guidance(cfg=2.0), schedule="euler", shift=1.0,
                            enhance_hf=False, frames=93, cond_frames=17, cond_encoding="mean")


def schedule_for(preset: LongCatSampling, released_shift: float) -> Schedule:
    """The grid a preset walks; ``released_shift`` (``scheduler_shift``) serves the presets
    whose shift is the released scheduler's."""
    shift = released_shift if preset.shift is None else preset.shift
    if preset.schedule == "euler":
        return euler_schedule(preset.steps, shift)
    return longcat_schedule(preset.steps, shift, distill=preset.schedule == "longcat-distill",
                            enhance_hf=preset.enhance_hf)


def cond_latent_frames(cond_frames: int, temporal_stride: int = 4) -> int:
    """Latent frames that hold ``cond_frames`` video frames (4n+1 of them): 13 -> 4, 17 -> 5."""
    if cond_frames < 1 or (cond_frames - 1) % temporal_stride:
        raise ModelInputError(f"cond_frames = {cond_frames}: must be {temporal_stride}n+1 (13, 17, ...)")
    return 1 + (cond_frames - 1) // temporal_stride
