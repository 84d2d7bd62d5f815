"""A step cache as plain values (all of it changes the numbers, so all of it is keyed), its
validation, and the factory that turns it into a ``StepCache`` for one DiT's range of steps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.easycache import EasyCache, EasyCacheRule
from wanflow.sampling.step_cache import (
    FirstBlockRule,
    MagCacheRule,
    Signals,
    StepCache,
    TeaCacheRule,
)
from wanflow.sampling.teacache import (
    TEACACHE_COEFFICIENTS,
    DitArchitecture,
    solve_threshold,
    teacache_plan,
    teacache_set,
)

METHODS = ("teacache", "first-block", "magcache", "easycache")
TEACACHE_MODES = ("e", "e0")
#: Where the settings live in a recipe; messages name these keys.
SECTION = "[sampler.cache]"
#: Settings of the other methods that EasyCache does not read, with the fix for each.
EASYCACHE_UNUSED = {
    "mode": "TeaCache's signal; EasyCache decides from the latent itself: remove it",
    "coefficients": "TeaCache's polynomial; EasyCache needs no coefficients: remove it",
    "calibrated": "TeaCache's polynomial; EasyCache needs no calibration: remove it",
    "ratios": "MagCache's calibrated ratios; EasyCache needs no calibration: remove them",
    "max_skips": "MagCache's K; EasyCache has no cap on consecutive skips (a lower threshold skips less): "
                 "remove it",
}


@attrs.frozen
class StepCacheSettings:
    """How to cache; every field is a plain value, so ``key()`` can join the denoise step's key."""

    method: str  # "teacache" | "first-block" | "magcache" | "easycache"
    threshold: float | None = None  # None: solve it from target_speedup (TeaCache)
    target_speedup: float | None = None  # TeaCache: at least this many times fewer block-stack runs
    mode: str = "e"  # TeaCache signal: "e" (time embedding) or "e0" (modulation; retains 5 steps)
    coefficients: str = "auto"  # TeaCache: "auto" (by architecture), a published set, or "calibrated"
    calibrated: tuple[float, ...] = ()  # TeaCache: a calibration's polynomial, highest power first
    ratios: tuple[tuple[str, tuple[float, ...]], ...] = ()  # MagCache: (branch, γ per step) pairs
    max_skips: int = 2  # MagCache's K (its default)
    retention: float = 0.2  # MagCache, EasyCache: fraction of steps always computed first (both default 0.2)

    def key(self) -> dict[str, Any]:
        """The settings as JSON-ready values (tuples as lists)."""
        return {k: _plain(v) for k, v in attrs.asdict(self).items()}

    def problems(self) -> list[str]:
        """Every invalid setting, each naming its key, the value and the fix."""
        out = []
        if self.method not in METHODS:
            out.append(f"{SECTION}.method = {self.method!r}: choose one of {list(METHODS)}")
        if (self.threshold is None) == (self.target_speedup is None):
            out.append(f"{SECTION}: give exactly one of threshold and target_speedup")
        if self.threshold is not None and not _finite_at_least(self.threshold, 0.0):
            out.append(f"{SECTION}.threshold = {self.threshold!r}: must be a finite number ≥ 0 (0 never skips)")
        if self.target_speedup is not None:
            if not _finite_at_least(self.target_speedup, 1.0):
                out.append(f"{SECTION}.target_speedup = {self.target_speedup!r}: must be a finite number ≥ 1")
            if self.method != "teacache":
                out.append(f"{SECTION}.target_speedup: only TeaCache's plan is known before sampling; "
                           f"give {self.method} a threshold")
        if self.mode not in TEACACHE_MODES:
            out.append(f"{SECTION}.mode = {self.mode!r}: choose one of {list(TEACACHE_MODES)}")
        if self.method != "easycache" and (self.coefficients == "calibrated") != bool(self.calibrated):
            out.append(f"{SECTION}.calibrated: give the fitted polynomial exactly when coefficients = \"calibrated\"")
        if self.method == "magcache" and not self.ratios:
            out.append(f"{SECTION}.ratios: MagCache needs the ratios of a calibration run on this model")
        if not isinstance(self.max_skips, int) or self.max_skips < 1:
            out.append(f"{SECTION}.max_skips = {self.max_skips!r}: must be an integer ≥ 1")
        if not _finite_at_least(self.retention, 0.0) or self.retention > 1:
            out.append(f"{SECTION}.retention = {self.retention!r}: must be a number in [0, 1]")
        if self.method == "easycache":
            out += [f"{SECTION}.{name} = {value!r}: {why}" for name, value, why in self.unused_by_easycache()]
        return out

    def unused_by_easycache(self) -> list[tuple[str, Any, str]]:
        """(key, value, fix) of every setting EasyCache does not read that differs from its
        default: keyed but without effect, so refused rather than ignored."""
        defaults = {f.name: f.default for f in attrs.fields(StepCacheSettings)}
        return [(name, getattr(self, name), why) for name, why in EASYCACHE_UNUSED.items()
                if getattr(self, name) != defaults[name]]

    def check(self) -> StepCacheSettings:
        """Refuse invalid settings, all problems at once; returns self for chaining."""
        problems = self.problems()
        if problems:
            raise ModelInputError("; ".join(problems))
        return self


def _plain(value: Any) -> Any:
    """Tuples (nested) as lists, as they read back from JSON."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _finite_at_least(value: object, low: float) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= low  # type: ignore[operator]


def teacache_coefficients(settings: StepCacheSettings, arch: DitArchitecture | None, family: str) -> tuple[float, ...]:
    """The calibrated polynomial, or the published set matching the DiT's architecture."""
    if settings.coefficients == "calibrated":
        return tuple(settings.calibrated)
    return TEACACHE_COEFFICIENTS[(teacache_set(arch, family, settings.coefficients), settings.mode)]


def make_step_cache(
    settings: StepCacheSettings, timesteps: Sequence[float] | torch.Tensor, *, start: int = 0,
    stop: int | None = None, arch: DitArchitecture | None = None, family: str = "",
    signals: Sequence[Signals] | None = None,
) -> StepCache:
    """The cache for one DiT over schedule steps [start, stop) (A14B: one per expert segment).

    TeaCache needs ``arch`` (``DitArchitecture.of(dit.cfg, experts)``) and the family name; with a
    target speed-up it also needs ``signals`` of every schedule step (``time_signals``), and then
    the returned cache carries the plan it will follow (``cache.plan``).
    """
    settings.check()
    stop = len(timesteps) if stop is None else stop
    if settings.method == "first-block":
        return StepCache(FirstBlockRule(float(settings.threshold)), timesteps, start, stop)
    if settings.method == "easycache":
        return EasyCache(EasyCacheRule(float(settings.threshold), settings.retention), timesteps, start, stop)
    if settings.method == "magcache":
        rule = MagCacheRule(_resampled(settings.ratios, len(timesteps)), float(settings.threshold),
                            settings.max_skips, settings.retention)
        return StepCache(rule, timesteps, start, stop)
    if arch is None and settings.coefficients != "calibrated":
        raise ModelInputError("step cache: TeaCache needs the DiT's architecture to choose coefficients")
    coefficients = teacache_coefficients(settings, arch, family)
    if settings.target_speedup is not None:
        if signals is None:
            raise ModelInputError("step cache: a target speed-up needs the schedule's time signals")
        plan = solve_threshold(coefficients, settings.mode, signals, settings.target_speedup, start, stop)
        return StepCache(TeaCacheRule(coefficients, plan.threshold, settings.mode), timesteps, start, stop, plan)
    rule = TeaCacheRule(coefficients, float(settings.threshold), settings.mode)
    plan = teacache_plan(rule, signals, start, stop) if signals is not None else None
    return StepCache(rule, timesteps, start, stop, plan)


def _resampled(ratios: Sequence[tuple[str, Sequence[float]]], steps: int) -> Mapping[str, tuple[float, ...]]:
    """MagCache's ratios per branch for ``steps`` steps: nearest-index resampling of a calibration
    made at another step count (MagCache4Wan2.1's ``nearest_interp``)."""
    out = {}
    for branch, values in ratios:
        if steps == 1:
            out[branch] = (float(values[-1]),)
            continue
        scale = (len(values) - 1) / (steps - 1)
        picks = np.round(np.arange(steps) * scale).astype(int)
        out[branch] = tuple(float(values[i]) for i in picks)
    return out
