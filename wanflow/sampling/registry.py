"""Solvers by name, and the loop that drives any of them from a start step to a stop step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Optional

import attrs
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.dpmpp import dpmpp_step
from wanflow.sampling.euler import euler_step
from wanflow.sampling.schedules import Schedule, dpmpp_schedule, euler_schedule, flow_schedule, unipc_schedule
from wanflow.sampling.state import ModelFn, SolverState, StepFn, start_state
from wanflow.sampling.unipc import unipc_step

#: Called after every step with the new state (progress bars, checkpoints).
Callback = Callable[[SolverState], None]


@attrs.frozen
class Solver:
    """A named sampler: its step function and the schedule it is meant to walk."""

    name: str
    step: StepFn
    schedule: Callable[[int, float, float], Schedule]  # (steps, shift, strength) → Schedule


BUILTIN_SOLVERS: Mapping[str, Solver] = MappingProxyType(
    {
        "euler": Solver("euler", euler_step, euler_schedule),  # DiffSynth's default
        "unipc": Solver("unipc", unipc_step, unipc_schedule),  # the official default
        "dpm++": Solver("dpm++", dpmpp_step, dpmpp_schedule),  # the official alternative
        "flow": Solver("flow", euler_step, flow_schedule),  # the Wan-Fun authors' (VideoX-Fun's "Flow")
    }
)


def get_solver(name: str, registry: Mapping[str, Solver] = BUILTIN_SOLVERS) -> Solver:
    """Look a solver up by name, or say which names exist."""
    if name not in registry:
        known = ", ".join(repr(n) for n in sorted(registry))
        raise ModelInputError(f"[sampler].solver = {name!r}: unknown solver; choose one of {known}")
    return registry[name]


def make_schedule(solver: str | Solver, steps: int, shift: float, strength: float = 1.0) -> Schedule:
    """The schedule of ``solver`` for ``steps`` steps, flow ``shift`` and denoising ``strength``
    (the grid starts at σ = strength and takes all ``steps`` steps)."""
    found = get_solver(solver) if isinstance(solver, str) else solver
    return found.schedule(steps, shift, strength)


def sample(
    solver: str | Solver,
    model_fn: ModelFn,
    x: Optional[torch.Tensor],
    schedule: Schedule,
    *,
    start: int = 0,
    stop: Optional[int] = None,
    callback: Optional[Callback] = None,
    state: Optional[SolverState] = None,
) -> SolverState:
    """Run steps [start, stop) from latent ``x``, or resume from ``state`` (then ``x`` is None).

    Returns the state after the last step; its ``x`` is the latent at σ = sigmas[stop].
    """
    step = (get_solver(solver) if isinstance(solver, str) else solver).step
    state = _initial_state(x, start, state)
    stop = schedule.steps if stop is None else stop
    if not state.index <= stop <= schedule.steps:
        raise ModelInputError(
            f"sample: stop = {stop} must lie in [{state.index}, {schedule.steps}] "
            "(the current step and the schedule's length)"
        )
    while state.index < stop:
        state = step(state, model_fn, schedule)
        if callback is not None:
            callback(state)
    return state


def _initial_state(
    x: Optional[torch.Tensor], start: int, state: Optional[SolverState]
) -> SolverState:
    """Either a fresh state at ``start`` or the resumed one; never both."""
    if (x is None) == (state is None):
        raise ModelInputError(
            "sample: pass exactly one of a latent x (fresh run) and a state (resume)"
        )
    if state is not None:
        return state
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ModelInputError(f"sample: start = {start!r} must be an integer ≥ 0")
    return start_state(x, start)
