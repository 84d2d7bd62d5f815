"""Flow-matching samplers for the Wan models: schedules, solvers, guidance, expert switch, noise.

A sampler is a stateless step ``state = step(state, model_fn, schedule)``; the state is an
explicit value (:class:`SolverState`) that round-trips through safetensors, so a denoise loop
can stop after any step and resume bit for bit.
"""

from wanflow.sampling.dpmpp import dpmpp_step
from wanflow.sampling.euler import euler_step
from wanflow.sampling.experts import (
    Expert,
    ExpertGuidance,
    ExpertSegment,
    check_boundary,
    expert_for,
    expert_model,
    expert_plan,
    expert_segments,
)
from wanflow.sampling.guidance import batched_cfg_model, cfg_model, check_cfg, guide
from wanflow.sampling.noise import check_seed, draw_seed, initial_latent, initial_noise, noised
from wanflow.sampling.registry import (
    BUILTIN_SOLVERS,
    Callback,
    Solver,
    get_solver,
    make_schedule,
    sample,
)
from wanflow.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    Schedule,
    denoise_start,
    dpmpp_schedule,
    euler_schedule,
    half_log_snr,
    shift_sigmas,
    unipc_schedule,
)
from wanflow.sampling.state import ModelFn, SolverState, StepFn, start_state
from wanflow.sampling.unipc import unipc_step

__all__ = [
    "BUILTIN_SOLVERS",
    "NUM_TRAIN_TIMESTEPS",
    "Callback",
    "Expert",
    "ExpertGuidance",
    "ExpertSegment",
    "ModelFn",
    "Schedule",
    "Solver",
    "SolverState",
    "StepFn",
    "batched_cfg_model",
    "cfg_model",
    "check_boundary",
    "check_cfg",
    "check_seed",
    "denoise_start",
    "dpmpp_schedule",
    "dpmpp_step",
    "draw_seed",
    "euler_schedule",
    "euler_step",
    "expert_for",
    "expert_model",
    "expert_plan",
    "expert_segments",
    "get_solver",
    "guide",
    "half_log_snr",
    "initial_latent",
    "initial_noise",
    "make_schedule",
    "noised",
    "sample",
    "shift_sigmas",
    "start_state",
    "unipc_schedule",
    "unipc_step",
]
