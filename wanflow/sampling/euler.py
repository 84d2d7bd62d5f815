"""Flow-matching Euler: the first-order ODE solver DiffSynth uses for Wan."""

from __future__ import annotations

from wanflow.sampling.schedules import Schedule
from wanflow.sampling.state import ModelFn, SolverState, predict_velocity


def euler_step(state: SolverState, model_fn: ModelFn, schedule: Schedule) -> SolverState:
    """One explicit Euler step of dx/dσ = v (rectified flow, Liu et al. 2022; Lipman et al. 2023).

    x_{σ'} = x_σ + (σ' − σ)·v(x_σ, t): exact for straight probability paths.
    """
    v = predict_velocity(state, model_fn, schedule)
    i = state.index
    dt = schedule.sigmas[i + 1] - schedule.sigmas[i]  # fp32 0-d, as DiffSynth and diffusers
    return SolverState(x=state.x + dt * v, index=i + 1)
