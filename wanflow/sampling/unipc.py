"""UniPC: the unified predictor-corrector solver, Wan's default sampler."""

from __future__ import annotations

import math

import torch

from wanflow.sampling.schedules import Schedule, half_log_snr
from wanflow.sampling.state import ModelFn, SolverState, predict_x0

ORDER = 2  # the official solver order (UniP-2 with UniC-2, "bh2")


def unipc_step(state: SolverState, model_fn: ModelFn, schedule: Schedule) -> SolverState:
    """One UniPC step (Zhao et al. 2023, arXiv:2302.04867): data prediction, flow form, bh2.

    As the official FlowUniPCMultistepScheduler: the corrector UniC refines the latent with the new
    model output on every step but the first; the predictor UniP-2 falls back to first order on
    the first step and on the last one (lower-order final).
    """
    i, x, steps = state.index, state.x, schedule.steps
    x0 = predict_x0(state, model_fn, schedule)
    if state.last_x is not None:
        order = min(ORDER, len(state.history), steps - i + 1)  # the last predictor's order
        x = _correct(state.last_x, state.history, x0, schedule, i, order)
    history = (*state.history, x0)[-ORDER:]
    order = min(ORDER, len(history), steps - i)
    x_next = _predict(x, history, schedule, i, order)
    return SolverState(x=x_next, index=i + 1, history=history, last_x=x)


def _step_terms(
    x: torch.Tensor, m0: torch.Tensor, s0: float, t: float
) -> tuple[torch.Tensor, float, float]:
    """First-order (DDIM) update s0 → t, the scale α_t·B(h) of the higher-order terms, and h."""
    h = half_log_snr(t) - half_log_snr(s0)
    b_h = math.expm1(-h)  # e^{−h} − 1
    alpha_t = 1.0 - t
    return (t / s0) * x - (alpha_t * b_h) * m0, alpha_t * b_h, h


def _predict(
    x: torch.Tensor, history: tuple[torch.Tensor, ...], schedule: Schedule, i: int, order: int
) -> torch.Tensor:
    """UniP: extrapolate from σ_i to σ_{i+1} with the last ``order`` x0 predictions."""
    s0, t = schedule.sigma(i), schedule.sigma(i + 1)
    m0 = history[-1]
    x_t, scale, h = _step_terms(x, m0, s0, t)
    if order == 1:
        return x_t
    rk = (half_log_snr(schedule.sigma(i - 1)) - half_log_snr(s0)) / h
    d1 = (history[-2] - m0) / rk
    return x_t - (scale * 0.5) * d1  # ρ = 1/2: the paper's choice for UniP-2


def _correct(
    last_x: torch.Tensor,
    history: tuple[torch.Tensor, ...],
    x0: torch.Tensor,
    schedule: Schedule,
    i: int,
    order: int,
) -> torch.Tensor:
    """UniC: redo the step σ_{i−1} → σ_i with the x0 predicted at σ_i as an extra node."""
    s0, t = schedule.sigma(i - 1), schedule.sigma(i)
    m0 = history[-1]
    x_t, scale, h = _step_terms(last_x, m0, s0, t)
    if order == 1:
        return x_t - (scale * 0.5) * (x0 - m0)
    rk = (half_log_snr(schedule.sigma(i - 2)) - half_log_snr(s0)) / h
    rho0, rho1 = _corrector_weights(-h, rk)
    d1 = (history[-2] - m0) / rk
    return x_t - scale * (rho0 * d1 + rho1 * (x0 - m0))


def _corrector_weights(hh: float, rk: float) -> tuple[float, float]:
    """Solve the 2×2 order conditions [[1, 1], [r, 1]]·ρ = b of UniC-2 in closed form."""
    b_h = math.expm1(hh)
    phi_1 = b_h / hh - 1.0  # φ-functions of the exponential integrator, scaled by h
    phi_2 = phi_1 / hh - 0.5
    b1, b2 = phi_1 / b_h, 2.0 * phi_2 / b_h
    rho0 = (b1 - b2) / (1.0 - rk)
    return rho0, b1 - rho0
