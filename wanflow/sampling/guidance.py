"""Guidance as a wrapper around model functions, never inline in a solver.

Plain CFG (Ho & Salimans 2022) and its batched form (DiffSynth's ``cfg_merge``), CFG-Zero*
(Fan et al. 2025) and skip-layer guidance (SD3.5; the Wan ComfyUI wrapper's variant). Options
that depend on the step read it from the timestep the solver passes (``step_index``), so the
wrappers hold no state and a resumed run guides exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import attrs
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.schedules import Schedule
from wanflow.sampling.state import ModelFn

#: Added to ‖v_u‖² in CFG-Zero*'s scale, as the authors' and LongCat's code do (an all-zero v_u).
ZERO_STAR_EPS = 1e-8
#: Recipe keys of the settings (messages name them; ``SettingProblem.key`` carries them).
CFG_MERGE_KEY = "sampler.cfg_merge"
ZERO_STAR_KEY = "sampler.cfg_zero_star"
ZERO_INIT_KEY = "sampler.cfg_zero_init_steps"
SLG_KEY = "sampler.slg_"  # + blocks, scale, start, end, mode
SLG_MODES = ("extra", "uncond")


def check_cfg(cfg: float) -> None:
    """Refuse a guidance scale that is not a finite number ≥ 0."""
    number = isinstance(cfg, (int, float)) and not isinstance(cfg, bool)
    if not number or not math.isfinite(cfg) or cfg < 0:
        raise ModelInputError(
            f"[sampler].cfg = {cfg!r}: must be a finite number ≥ 0 (1.0 = no guidance)"
        )


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """CFG (Ho & Salimans 2022): uncond + cfg·(cond − uncond), in fp32."""
    uncond = uncond.float()
    return uncond + cfg * (cond.float() - uncond)


def zero_star_scale(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s s* = ⟨v_c, v_u⟩ / (‖v_u‖² + ε) per sample, fp32, (B, 1, …) to broadcast."""
    c, u = cond.float().flatten(1), uncond.float().flatten(1)  # (B, N)
    s = (c * u).sum(dim=1) / ((u * u).sum(dim=1) + ZERO_STAR_EPS)  # (B,)
    return s.view(-1, *([1] * (cond.ndim - 1)))


def guide_zero_star(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025): s*·v_u + cfg·(v_c − s*·v_u), in fp32.

    s* is the least-squares scale of the unconditional velocity towards the conditional one;
    early in sampling it shrinks a v_u that points elsewhere instead of extrapolating from it.
    """
    scaled = uncond.float() * zero_star_scale(cond, uncond)
    return scaled + cfg * (cond.float() - scaled)


def cfg_model(cond_fn: ModelFn, uncond_fn: ModelFn, cfg: float) -> ModelFn:
    """Guide two model functions (prompt, negative prompt); cfg = 1 skips the unconditional pass."""
    check_cfg(cfg)
    if cfg == 1.0:
        return cond_fn

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guide(cond_fn(x, t), uncond_fn(x, t), cfg)

    return guided


def batched_cfg_model(pair_fn: ModelFn, cfg: float) -> ModelFn:
    """Guide one model function that evaluates a batch of [cond; uncond] halves in a single call.

    ``pair_fn`` gets x repeated twice along the batch (2B, …) and returns (2B, …): the first B
    rows conditioned on the prompt, the last B on the negative prompt.
    """
    check_cfg(cfg)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = pair_fn(torch.cat([x, x]), t).chunk(2)  # (2B, …) → 2 × (B, …)
        return guide(cond, uncond, cfg)

    return guided


def step_index(schedule: Schedule, t: torch.Tensor) -> int:
    """The schedule step a model call belongs to: the nearest timestep (ties: the earliest)."""
    distance = (schedule.timesteps.double() - float(t)).abs()
    return int(torch.argmin(distance))  # argmin returns the first of equal minima


@attrs.frozen
class SkipLayerGuidance:
    """Skip-layer guidance: a pass with ``blocks`` left out, from ``start`` to ``end`` of the steps.

    ``"extra"`` (SD3.5): one more pass on the prompt, v += scale·(v_c − v_skip).
    ``"uncond"`` (the Wan ComfyUI wrapper): the negative pass itself skips the blocks; scale 1 is
    the wrapper exactly, 0 plain CFG, between them a blend of both negative passes.
    """

    blocks: tuple[int, ...]
    scale: float
    start: float  # fraction of the steps, inclusive: step/steps ≥ start
    end: float  # inclusive: step/steps ≤ end (1.0 = to the last step)
    mode: Literal["extra", "uncond"]

    @property
    def prompt(self) -> str:
        """Which prompt the skip pass is bound to: "pos" for "extra", "neg" for "uncond"."""
        return "pos" if self.mode == "extra" else "neg"

    def active(self, step: int, steps: int) -> bool:
        """Whether this step runs the skip pass (never at scale 0: that is plain CFG)."""
        return self.scale != 0 and self.start <= step / steps <= self.end


@attrs.frozen
class Guidance:
    """Every guidance setting of a denoise segment; plain values, all part of the step's key."""

    cfg: float
    batched: bool = False  # cond and uncond in one batch-2 forward (DiffSynth's cfg_merge)
    zero_star: bool = False  # CFG-Zero*'s optimised scale
    zero_init_steps: int = 0  # CFG-Zero*: steps from the start whose velocity is zero
    slg: SkipLayerGuidance | None = None

    def __attrs_post_init__(self) -> None:
        """Refuse malformed values; an option cfg = 1 leaves inert is the recipe's to refuse
        (A14B: one expert may run without guidance while the other guides)."""
        check_cfg(self.cfg)
        refuse(check_zero_star(self.zero_star, self.zero_init_steps, None, ()))
        if self.slg is not None:
            s = self.slg
            refuse(check_slg(s.blocks, s.scale, s.start, s.end, s.mode, ()))


@attrs.frozen
class Passes:
    """The model functions guidance may call, all bound to one DiT and its conditioning."""

    cond: ModelFn  # the prompt
    uncond: ModelFn | None = None  # the negative prompt (needed when cfg ≠ 1, unbatched)
    pair: ModelFn | None = None  # (2B, …) → [cond; uncond] rows in one forward (batched)
    skip: ModelFn | None = None  # SLG: ``SkipLayerGuidance.prompt`` with its blocks skipped


def guided_model(passes: Passes, guidance: Guidance, schedule: Schedule) -> ModelFn:
    """One model function applying ``guidance`` over ``passes``; stateless between calls."""
    _check_passes(passes, guidance)
    refuse(check_zero_star(guidance.zero_star, guidance.zero_init_steps, schedule.steps, ()))
    combine = guide_zero_star if guidance.zero_star else guide

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        step = step_index(schedule, t)
        if step < guidance.zero_init_steps:  # CFG-Zero*'s zero-init: no model evaluation at all
            return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        slg = guidance.slg if guidance.slg is not None and guidance.slg.active(step, schedule.steps) else None
        cond, uncond = _cond_uncond(passes, guidance, slg, x, t)
        v = cond.float() if uncond is None else combine(cond, uncond, guidance.cfg)
        if slg is not None and slg.mode == "extra":
            v = v + slg.scale * (cond.float() - passes.skip(x, t).float())
        return v

    return guided


def _cond_uncond(passes: Passes, g: Guidance, slg: SkipLayerGuidance | None,
                 x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditional and (None at cfg = 1) unconditional velocities of this step."""
    if g.cfg == 1.0:
        return passes.cond(x, t), None
    replace = slg is not None and slg.mode == "uncond"
    if replace and slg.scale == 1.0:  # the wrapper: the negative pass is the skip pass
        return passes.cond(x, t), passes.skip(x, t)
    if g.batched:
        cond, uncond = passes.pair(torch.cat([x, x]), t).chunk(2)  # (2B, …) → 2 × (B, …)
    else:
        cond, uncond = passes.cond(x, t), passes.uncond(x, t)
    if replace:  # blend the plain and the skip-layer negative passes
        uncond = uncond.float() + slg.scale * (passes.skip(x, t).float() - uncond.float())
    return cond, uncond


def _check_passes(passes: Passes, g: Guidance) -> None:
    """Every pass the settings will call is bound; a missing one is a wiring bug, found now."""
    needed = []
    if g.cfg != 1.0:
        needed.append("pair" if g.batched else "uncond")
    if g.slg is not None and g.slg.scale != 0 and (g.slg.mode == "extra" or g.cfg != 1.0):
        needed.append("skip")
    missing = [name for name in needed if getattr(passes, name) is None]
    if missing:
        raise ModelInputError(f"guidance: the settings {g!r} call the passes {missing}, which are "
                              "not bound; build them from the DiT before sampling")


# ----------------------------------------------------------------------------- validation


class SettingProblem(NamedTuple):
    """One bad setting: its dotted recipe key, the value, and what is wrong with the fix."""

    key: str  # "sampler.slg_blocks"
    value: object
    message: str


def refuse(problems: Sequence[SettingProblem]) -> None:
    """Raise every problem at once, each naming its key (``[sampler].slg_end = 2.0: …``)."""
    if problems:
        raise ModelInputError("\n".join(f"{key_name(p.key)} = {p.value!r}: {p.message}" for p in problems))


def check_zero_star(enabled: bool, zero_init_steps: int, steps: int | None,
                    cfgs: Sequence[float]) -> list[SettingProblem]:
    """CFG-Zero*: zero-init within the schedule, and only where guidance runs (pure).

    ``steps`` None skips the schedule check; ``cfgs`` are every expert's guidance scale (none:
    skip the check that some guidance runs).
    """
    problems = []
    if not _count(zero_init_steps):
        return [SettingProblem(ZERO_INIT_KEY, zero_init_steps, "must be an integer ≥ 0 (steps whose "
                               "velocity is zero; 1 as the CFG-Zero* authors' pipelines, 0 = none)")]
    if zero_init_steps and not enabled:
        problems.append(SettingProblem(ZERO_INIT_KEY, zero_init_steps, f"zero-init belongs to CFG-Zero*: "
                                       f"set {key_name(ZERO_STAR_KEY)} = true, or use 0"))
    if steps is not None and zero_init_steps >= steps:
        problems.append(SettingProblem(ZERO_INIT_KEY, zero_init_steps, f"the schedule has {steps} steps; "
                                       f"zeroing them all never moves the noise: use at most {steps - 1}"))
    if enabled and cfgs and all(c == 1.0 for c in cfgs):
        problems.append(SettingProblem(ZERO_STAR_KEY, enabled, "CFG-Zero* rescales the negative pass, "
                                       "and cfg = 1 runs none: raise [sampler].cfg or turn it off"))
    return problems


def check_slg(blocks: Sequence[int], scale: float, start: float, end: float, mode: str,
              cfgs: Sequence[float], num_layers: int | None = None) -> list[SettingProblem]:
    """Skip-layer guidance: blocks, scale, a start ≤ end inside [0, 1], a known mode (pure).

    ``num_layers`` (the DiT's blocks) is known once its config is read; None skips that check.
    """
    problems = []
    if not blocks or not all(_count(b) for b in blocks) or len(set(blocks)) != len(blocks):
        problems.append(SettingProblem(SLG_KEY + "blocks", blocks, "must be distinct block indices ≥ 0, "
                                       "e.g. [9] (numbered from 0)"))
    elif num_layers is not None and max(blocks) >= num_layers:
        beyond = [b for b in blocks if b >= num_layers]
        problems.append(SettingProblem(SLG_KEY + "blocks", blocks, f"this DiT has {num_layers} blocks, "
                                       f"numbered 0..{num_layers - 1}: drop {beyond}"))
    if not _finite(scale) or scale < 0:
        problems.append(SettingProblem(SLG_KEY + "scale", scale, "must be a finite number ≥ 0 (0 = off)"))
    for name, value in (("start", start), ("end", end)):
        if not _finite(value) or not 0 <= value <= 1:
            problems.append(SettingProblem(SLG_KEY + name, value, "a fraction of the steps in [0, 1]"))
    if _finite(start) and _finite(end) and start > end:
        problems.append(SettingProblem(SLG_KEY + "end", end, f"ends before it starts ({start}): "
                                       f"use an end ≥ {start}"))
    if mode not in SLG_MODES:
        problems.append(SettingProblem(SLG_KEY + "mode", mode, f"choose one of {list(SLG_MODES)}"))
    elif mode == "uncond" and cfgs and all(c == 1.0 for c in cfgs):
        problems.append(SettingProblem(SLG_KEY + "mode", mode, "acts on the negative pass, which "
                                       "cfg = 1 does not run: raise [sampler].cfg or use \"extra\""))
    return problems


def key_name(dotted: str) -> str:
    """``sampler.slg_end`` as a recipe file shows it: ``[sampler].slg_end``."""
    table, name = dotted.rsplit(".", 1)
    return f"[{table}].{name}"


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
