"""The explicit, serialisable state of a solver between steps: a killed run resumes bit for bit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional, Protocol

import attrs
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.schedules import Schedule

#: A flow model: (x (B, C, T, H, W) fp32, t 0-d timestep tensor on the CPU) → velocity v ≈ ε − x0.
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@attrs.frozen(eq=False)
class SolverState:
    """Everything a solver carries from one step to the next; a plain value, never mutated."""

    x: torch.Tensor  # the current latent (B, C, T, H, W), fp32
    index: int  # the next step to take: the latent sits at σ = schedule.sigmas[index]
    history: tuple[torch.Tensor, ...] = ()  # previous x0 predictions, newest last (multistep)
    last_x: Optional[torch.Tensor] = None  # UniPC: the latent before the last predictor

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flatten into named tensors, ready for ``safetensors.torch.save``."""
        out = {"x": self.x.contiguous(), "index": torch.tensor([self.index], dtype=torch.int64)}
        out.update({f"history.{i}": h.contiguous() for i, h in enumerate(self.history)})
        if self.last_x is not None:
            out["last_x"] = self.last_x.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> SolverState:
        """Rebuild a state written by :meth:`to_tensors`."""
        if "x" not in tensors or "index" not in tensors:
            raise ModelInputError(
                f"solver state: needs 'x' and 'index', got keys {sorted(tensors)}; "
                "was this file written by SolverState.to_tensors?"
            )
        history = tuple(tensors[f"history.{i}"] for i in range(_count_history(tensors)))
        return cls(
            x=tensors["x"],
            index=int(tensors["index"][0]),
            history=history,
            last_x=tensors.get("last_x"),
        )


def _count_history(tensors: Mapping[str, torch.Tensor]) -> int:
    """How many consecutive ``history.i`` entries there are."""
    n = 0
    while f"history.{n}" in tensors:
        n += 1
    return n


class StepFn(Protocol):
    """One solver step: the shared signature of every sampler in the registry."""

    def __call__(self, state: SolverState, model_fn: ModelFn, schedule: Schedule) -> SolverState:
        ...


def start_state(x: torch.Tensor, start: int = 0) -> SolverState:
    """The state before the first step at ``start``: the latent in fp32 and no history."""
    return SolverState(x=x.float(), index=start)


def predict_velocity(state: SolverState, model_fn: ModelFn, schedule: Schedule) -> torch.Tensor:
    """Evaluate the model at the state's step, upcast to fp32, and refuse a misshapen output."""
    if not 0 <= state.index < schedule.steps:
        raise ModelInputError(
            f"solver step {state.index} is outside the schedule's {schedule.steps} steps; "
            "the run is already complete or the state belongs to another schedule"
        )
    v = model_fn(state.x, schedule.timesteps[state.index])
    if v.shape != state.x.shape:
        raise ModelInputError(
            f"model output has shape {tuple(v.shape)}, the latent {tuple(state.x.shape)}: "
            "the model must return a velocity of the latent's shape"
        )
    return v.float()


def predict_x0(state: SolverState, model_fn: ModelFn, schedule: Schedule) -> torch.Tensor:
    """Data prediction x0 = x_σ − σ·v from the model's velocity (flow matching)."""
    v = predict_velocity(state, model_fn, schedule)
    return state.x - schedule.sigma(state.index) * v
