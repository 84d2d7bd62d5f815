"""Step caching: per denoising step and guidance branch, run the DiT's block stack or reuse it.

Rules decide when what the DiT computed at the last computed step may stand in for a new
computation (the model side, ``wanflow.models.dit_cache``, does the running); the first three
reuse the residual of the block stack, EasyCache the output of the whole call:

- **TeaCache** (Liu et al. 2024, "Timestep Embedding Tells: It's Time to Cache", arXiv:2411.19108;
  the authors' TeaCache4Wan2.1): accumulate a polynomial rescaling of the relative L1 change of the
  time embedding; compute (and reset) once it reaches the threshold. The signal depends only on
  the timesteps, so the whole plan, and a threshold for a target speed-up, is known before
  sampling (Wan2GP's speed-multiplier solver does the same).
- **First-Block-Cache** (ParaAttention; diffusers' ``FirstBlockCacheConfig``): run block 0; skip
  the rest while its residual changed by less than the threshold since the last computed step.
  Needs no coefficients, so it works for every Wan model.
- **MagCache** (Ma et al. 2025, MagCache4Wan2.1): accumulate the error of the calibrated ratio of
  residual magnitudes between steps; skip while it stays under the threshold and at most K steps.
- **EasyCache** (Zhou et al. 2025, ``wanflow.sampling.easycache``): predict the output's change
  from the raw input's, at a rate measured between computed steps; a skipped call reuses the
  whole DiT's last transformation ``y − x`` (``StepCache.reused_output``), not only the blocks'.

Each branch ("cond", "uncond", or one name for a batched pair) keeps its own accumulator and
residual, as in the reference implementations (EasyCache's unconditional pass follows the
conditional decision, as in its own). Under sliding windows each window of a pass is a branch
of its own (``"cond@0:8"``: its tokens, so its residual) reading its pass's calibration; the
skip-layer guidance pass is never cached. Thresholds of 0 never skip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import attrs
import torch

from wanflow.errors import ModelInputError

#: TeaCache: steps computed at the start of a cache's range, whatever the accumulator says
#: (TeaCache4Wan2.1: ``ret_steps`` = 1 step in mode "e", 5 steps in mode "e0"); mode "e" also
#: computes the schedule's last step (``cutoff_steps = 2·steps − 2``), mode "e0" does not.
TEACACHE_RETAINED = {"e": 1, "e0": 5}


class Signals(Protocol):
    """What the model side measures (``wanflow.models.dit_cache.CacheSignals``)."""

    e: torch.Tensor
    e0: torch.Tensor
    first_residual: torch.Tensor | None


def relative_l1(now: torch.Tensor, before: torch.Tensor) -> float:
    """mean|now − before| / mean|before|: the change measure of TeaCache and First-Block-Cache."""
    return ((now - before).abs().mean() / before.abs().mean()).item()


def polynomial(coefficients: Sequence[float], x: float) -> float:
    """Horner's rule, highest power first (numpy.poly1d's order, as the published sets)."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


@attrs.define
class BranchState:
    """Mutable per-branch state of one cache: accumulators, last signal, cached residual."""

    branch: str  # "cond", "uncond", or one name for a batched pair
    next_step: int  # the schedule step of this branch's next model call
    acc: float = 0.0  # TeaCache: rescaled change accumulated since the last computed step
    ratio: float = 1.0  # MagCache: product of magnitude ratios since the last computed step
    err: float = 0.0  # MagCache: accumulated |1 − ratio|
    skips: int = 0  # MagCache: steps accumulated since the last computed step
    signal: torch.Tensor | None = None  # the reference signal the next change is measured from
    residual: torch.Tensor | None = None  # what the skipped blocks stand for (compute dtype)
    computed: list[int] = attrs.Factory(list)  # steps whose blocks ran


@attrs.frozen
class TeaCacheRule:
    """TeaCache4Wan2.1's decision: ``acc += poly(rel_l1(m_t, m_prev))``; skip while acc < threshold.

    m is ``e`` (mode "e") or ``e0`` (mode "e0", TeaCache's ``use_ret_steps``); m_prev is the
    previous call's signal whether or not it was computed; a computed step resets acc to 0.
    """

    coefficients: tuple[float, ...]
    threshold: float
    mode: str = "e"
    uses_first_block = False

    def forced(self, step: int, start: int, last: int) -> bool:
        """The retained first steps of the range and, in mode "e", the schedule's last step."""
        return step - start < TEACACHE_RETAINED[self.mode] or (self.mode == "e" and step == last)

    def change(self, signal: torch.Tensor, before: torch.Tensor) -> float:
        """The rescaled change poly(rel_l1) the accumulator adds."""
        return polynomial(self.coefficients, relative_l1(signal, before))

    def decide(self, state: BranchState, step: int, start: int, last: int, signals: Signals) -> bool:
        signal = signals.e if self.mode == "e" else signals.e0
        before, state.signal = state.signal, signal
        if before is None or self.forced(step, start, last):
            state.acc = 0.0
            return True
        state.acc += self.change(signal, before)
        if self.threshold > 0 and state.acc < self.threshold:
            return False
        state.acc = 0.0
        return True


@attrs.frozen
class FirstBlockRule:
    """First-Block-Cache: skip blocks 1..N−1 while rel_l1(r₁, r₁ at the last computed step) < threshold.

    r₁ is block 0's residual; the reference is updated only when the stack runs (as diffusers'
    hook), so slow drift still adds up to a recomputation.
    """

    threshold: float
    uses_first_block = True

    def decide(self, state: BranchState, step: int, start: int, last: int, signals: Signals) -> bool:
        residual = signals.first_residual
        if residual is None:
            raise ModelInputError("first-block cache: the model side passed no first-block residual")
        measured = state.signal is not None and self.threshold > 0
        if measured and relative_l1(residual, state.signal) < self.threshold:
            return False
        state.signal = residual
        return True


@attrs.frozen
class MagCacheRule:
    """MagCache4Wan2.1's decision from calibrated magnitude ratios γ_t = mean‖r_t‖/‖r_{t−1}‖.

    After the first ``retention``·steps steps: ratio *= γ_t, err += |1 − ratio|, skips += 1; skip
    while err < threshold and skips ≤ max_skips, else compute and reset all three.
    """

    ratios: Mapping[str, tuple[float, ...]]  # branch -> one γ per schedule step
    threshold: float
    max_skips: int = 2  # MagCache's default K
    retention: float = 0.2  # MagCache's default retention ratio
    uses_first_block = False

    def decide(self, state: BranchState, step: int, start: int, last: int, signals: Signals) -> bool:
        retained = math.floor((last + 1) * self.retention + 1e-9)
        if step == start or step < retained or self.threshold <= 0:
            state.ratio, state.err, state.skips = 1.0, 0.0, 0
            return True
        ratios = self.ratios.get(guidance_branch(state.branch))
        if ratios is None:
            raise ModelInputError(
                f"magcache: no calibrated ratios for branch {state.branch!r} (have {sorted(self.ratios)})"
            )
        state.ratio *= ratios[step]
        state.err += abs(1.0 - state.ratio)
        state.skips += 1
        if state.err < self.threshold and state.skips <= self.max_skips:
            return False
        state.ratio, state.err, state.skips = 1.0, 0.0, 0
        return True


def guidance_branch(branch: str) -> str:
    """The guidance pass a branch belongs to: a sliding window's branch (``"cond@0:8"``) reads its
    pass's calibration (``"cond"``)."""
    return branch.split("@", 1)[0]


Rule = TeaCacheRule | FirstBlockRule | MagCacheRule


class StepCache:
    """One DiT's step cache over schedule steps [start, stop): the object ``cached_forward`` asks.

    Steps are counted per branch from ``start`` and checked against the schedule's timesteps, so a
    solver that evaluates the model more than once per step is refused rather than mis-cached.
    """

    def __init__(self, rule: Rule, timesteps: Sequence[float] | torch.Tensor,
                 start: int = 0, stop: int | None = None, plan: CachePlan | None = None):
        self.rule = rule
        self.plan = plan  # the steps a TeaCache will compute, known before sampling
        self.timesteps = [float(t) for t in timesteps]
        self.start = start
        self.stop = len(self.timesteps) if stop is None else stop
        if not 0 <= self.start < self.stop <= len(self.timesteps):
            raise ModelInputError(
                f"step cache: range [{start}, {stop}) is not inside the schedule's "
                f"{len(self.timesteps)} steps"
            )
        self.last = len(self.timesteps) - 1
        self.branches: dict[str, BranchState] = {}

    @property
    def uses_first_block(self) -> bool:
        return self.rule.uses_first_block

    def state(self, branch: str) -> BranchState:
        if branch not in self.branches:
            self.branches[branch] = BranchState(branch, self.start)
        return self.branches[branch]

    def step_for(self, branch: str, t: torch.Tensor) -> int:
        """The next step of ``branch``; its timestep must be the one the model is given."""
        state = self.state(branch)
        step = state.next_step
        given = float(torch.as_tensor(t).max())
        if step >= self.stop or self.timesteps[step] != given:
            expected = f"step {step} at t = {self.timesteps[step]}" if step < self.stop else "no more steps"
            raise ModelInputError(
                f"step cache ({branch}): the model was called at t = {given}, expected {expected}; "
                "a step cache needs exactly one model evaluation per step and branch, in order"
            )
        state.next_step += 1
        return step

    def reused_output(self, step: int, branch: str, x: torch.Tensor) -> torch.Tensor | None:
        """Asked before the forward with the DiT's raw input: an output standing in for the whole
        call, or None to run it. These rules only ever skip the block stack, so always None."""
        return None

    def decide(self, step: int, branch: str, signals: Signals) -> bool:
        """True: run the blocks; False: reuse the cached residual."""
        state = self.state(branch)
        _to_device(state, signals.e.device)
        compute = self.rule.decide(state, step, self.start, self.last, signals)
        if not compute and state.residual is None:
            raise ModelInputError(f"step cache ({branch}): step {step} skipped with no residual cached")
        if compute:
            state.computed.append(step)
        return compute

    def cached_residual(self, branch: str) -> torch.Tensor:
        return self.state(branch).residual  # type: ignore[return-value]

    def finish(self, step: int, branch: str, residual: torch.Tensor | None, output: torch.Tensor) -> None:
        if residual is not None:
            self.state(branch).residual = residual

    def computed_steps(self, branch: str) -> tuple[int, ...]:
        """The steps whose blocks ran for ``branch`` so far."""
        return tuple(self.state(branch).computed)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every branch's state as named tensors, to checkpoint beside the solver state: a run
        resumed through ``load_state_tensors`` decides and adds exactly as an uninterrupted one."""
        out = {}
        for name, s in self.branches.items():
            scalars = [s.acc, s.ratio, s.err, s.skips, s.next_step]
            out[f"{name}.scalars"] = torch.tensor(scalars, dtype=torch.float64)
            out[f"{name}.computed"] = torch.tensor(s.computed, dtype=torch.int64)
            for field in ("signal", "residual"):
                if getattr(s, field) is not None:
                    out[f"{name}.{field}"] = getattr(s, field).contiguous()
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` wrote (replacing every branch's state)."""
        self.branches = {}
        for name in {key.rsplit(".", 1)[0] for key in tensors}:
            acc, ratio, err, skips, next_step = tensors[f"{name}.scalars"].tolist()
            self.branches[name] = BranchState(
                name, int(next_step), acc, ratio, err, int(skips), tensors.get(f"{name}.signal"),
                tensors.get(f"{name}.residual"), tensors[f"{name}.computed"].tolist(),
            )


def _to_device(state: BranchState, device: torch.device) -> None:
    """Bring a branch's tensors to the compute device: a state restored from a checkpoint comes
    back on the CPU (a no-op when they are there already)."""
    for field in ("signal", "residual"):
        value = getattr(state, field)
        if value is not None and value.device != device:
            setattr(state, field, value.to(device))


@attrs.frozen
class CachePlan:
    """The steps a cache computes over [start, stop), known before sampling (TeaCache)."""

    threshold: float
    computed: tuple[int, ...]
    start: int
    stop: int

    @property
    def speedup(self) -> float:
        """Forwards without the cache over forwards with it (per branch)."""
        return (self.stop - self.start) / len(self.computed)
