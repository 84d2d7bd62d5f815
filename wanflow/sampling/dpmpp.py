"""DPM-Solver++(2M): the multistep second-order solver the official code offers as ``dpm++``."""

from __future__ import annotations

import math

from wanflow.sampling.schedules import Schedule, half_log_snr
from wanflow.sampling.state import ModelFn, SolverState, predict_x0


def dpmpp_step(state: SolverState, model_fn: ModelFn, schedule: Schedule) -> SolverState:
    """One DPM-Solver++(2M) step (Lu et al. 2022, arXiv:2211.01095), midpoint form, flow α = 1 − σ.

    First order on the first step (no history yet) and on the last one (σ' = 0), as the official
    FlowDPMSolverMultistepScheduler; second order in between.
    """
    i = state.index
    x0 = predict_x0(state, model_fn, schedule)
    s0, t = schedule.sigma(i), schedule.sigma(i + 1)
    h = half_log_snr(t) - half_log_snr(s0)
    scale = (1.0 - t) * math.expm1(-h)  # α_t·(e^{−h} − 1)
    x = (t / s0) * state.x - scale * x0
    if state.history and i < schedule.steps - 1:
        r0 = (half_log_snr(s0) - half_log_snr(schedule.sigma(i - 1))) / h
        x = x - (0.5 * scale / r0) * (x0 - state.history[-1])
    return SolverState(x=x, index=i + 1, history=(x0,))
