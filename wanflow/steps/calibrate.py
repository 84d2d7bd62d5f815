"""Calibrate a step cache on the exact model a recipe runs: its own denoise, never skipping.

TeaCache's coefficients and MagCache's ratios are fitted from uncached sampling runs over a few
prompts (``wanflow.sampling.step_cache_calibration``). Here each run is the recipe's planned
denoise node itself, with a ``Calibration`` standing where its step cache would be: the same
files and LoRAs through the model pool, the same solver, schedule, guidance, noise and
conditioning, so what is fitted is the model the recipe generates with. The nodes before denoise
(text encoding, conditioning) run through the engine and are cached like those of any run.
An A14B recipe gets one calibration per expert segment, as each expert is its own DiT;
LongCat-Video's denoise step (its own DiT and loop) takes one over its whole schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import structlog

from wanflow.engine.execute import Executor
from wanflow.engine.plan import Plan, PlannedStep
from wanflow.errors import EngineError, ModelInputError, RecipeError
from wanflow.steps.denoise import Denoise, expert_cfgs
from wanflow.steps.denoise_longcat import LongCatDenoise

log = structlog.get_logger(__name__)

#: Varied subjects, motion and styles: the first of them follow the recipe's own prompt when no
#: prompts file is given (a calibration over one prompt fits that prompt's video, not the model).
DEFAULT_PROMPTS = (
    "A lively puppy running across green grass, documentary style",
    "A city street at night in the rain, neon signs reflecting on wet asphalt, slow dolly shot",
    "Close-up of a woman laughing in warm afternoon light, shallow depth of field",
    "Ocean waves crashing against black volcanic rocks, aerial drone shot",
    "A steaming cup of coffee on a wooden table, steam curling upward, still camera",
    "An astronaut floating inside a space station, weightless objects drifting around",
    "A watercolor animation of a fox jumping over a snowy hill",
    "A crowded market in the morning, people walking past fruit stalls, handheld camera",
)
#: TeaCache's polynomial degree, as the authors fitted the published Wan2.1 sets.
DEGREE = 4


@attrs.frozen
class ExpertCalibration:
    """What one DiT recorded over schedule steps [start, stop) of every run."""

    role: str  # "dit", or A14B's "dit_high_noise" / "dit_low_noise"
    start: int
    stop: int
    calibration: Any  # wanflow.sampling.step_cache_calibration.Calibration


@attrs.frozen
class CalibrationResult:
    """Every expert's records, in schedule order, and the runs they came from."""

    experts: tuple[ExpertCalibration, ...]
    prompts: tuple[str, ...]
    steps: int  # the schedule's length (MagCache's ratios have one value per step)


class _Recorder:
    """Hands each expert segment its Calibration, kept across runs (``new_run`` between them)."""

    def __init__(self) -> None:
        self.experts: dict[str, ExpertCalibration] = {}
        self.role = ""

    def cache_for(self, timesteps: Any, span: tuple[int, int]) -> Any:
        from wanflow.sampling.step_cache_calibration import Calibration

        found = self.experts.get(self.role)
        if found is None:
            found = ExpertCalibration(self.role, span[0], span[1], Calibration(timesteps, *span))
            self.experts[self.role] = found
        elif (found.start, found.stop) != span:
            raise EngineError(f"calibration: {self.role} ran steps [{span[0]}, {span[1]}) after "
                              f"[{found.start}, {found.stop}); every run must take the same schedule")
        else:
            found.calibration.new_run()
        return found.calibration


@attrs.frozen
class CalibratingDenoise(Denoise):
    """The planned denoise with a never-skipping ``Calibration`` as every segment's step cache."""

    recorder: _Recorder = attrs.field(factory=_Recorder)

    def _segment(self, ctx: Any, role: str, *rest: Any) -> Any:
        self.recorder.role = role
        return super()._segment(ctx, role, *rest)

    def _cache(self, p: Mapping[str, Any], role: str, dit: Any, schedule: Any, state: Any, call: Any,
               span: tuple[int, int], resumed: Mapping[str, Any]) -> Any:
        return self.recorder.cache_for(schedule.timesteps, span)


@attrs.frozen
class CalibratingLongCatDenoise(LongCatDenoise):
    """LongCat's planned denoise with a never-skipping ``Calibration`` as its step cache."""

    recorder: _Recorder = attrs.field(factory=_Recorder)

    def _step_cache(self, p: Mapping[str, Any], schedule: Any, resumed: Mapping[str, Any], dit: Any,
                    frames: int) -> Any:
        self.recorder.role = "dit"
        return self.recorder.cache_for(schedule.timesteps, (0, schedule.steps))


class _PlannedWeights:
    """The weights of a planned step, as a step's ``schedule`` reads them before anything runs."""

    def __init__(self, ps: PlannedStep):
        self._ps = ps

    def weight(self, role: str) -> Path:
        return Path(self._ps.spec.weights[role].path)


class _DenoiseContext(_PlannedWeights):
    """What the engine gives a running step, for a denoise whose output is not kept: its planned
    params, its inputs from the engine, its files and weights; no checkpoints (a calibration run
    is not resumed)."""

    def __init__(self, ex: Executor, ps: PlannedStep):
        super().__init__(ps)
        self._ex = ex
        self.params = dict(ps.params)

    def input(self, role: str) -> Any:
        return self._ex.load(self._ps.spec.inputs[role])

    def file(self, role: str) -> Path:
        return Path(self._ps.spec.files[role])

    def progress(self, total: int, desc: str = "", unit: str = "it") -> Any:
        return self._ex.bars(total, desc or "calibrate", unit)

    def load_partial(self) -> None:
        return None

    def save_partial(self, done: int, state: Any) -> None:
        return None


def calibration_problems(resolved: Any) -> list[str]:
    """Why a resolved recipe cannot be calibrated as it is, each with the key and the fix."""
    where, v = str(resolved.path), resolved.values
    problems = []
    if resolved.sweep_jobs() != [resolved]:
        problems.append(f"{where}: [sweep] makes {len(resolved.sweep_jobs())} jobs; calibrate one "
                        "model setup at a time: remove [sweep] (or calibrate a copy without it)")
    if getattr(resolved.recipe, "train", None) is not None:
        problems.append(f"{where}: [train] is a training recipe; calibrate a generation recipe of the model")
    method, threshold = v["sampler.cache.method"], v["sampler.cache.threshold"]
    if method != "none" and threshold != 0:
        problems.append(f"{where}: [sampler.cache].method = {method!r} skips steps, and a calibration "
                        "must compute every step: set method = \"none\" (or --set sampler.cache.method=none)")
    if v["sampler.sliding_window_size"] is not None:
        problems.append(f"{where}: [sampler].sliding_window_size: calibrate over the whole clip (each window "
                        "would fit values of its own, and [sampler.cache] holds one set per guidance pass, "
                        "which every window then reads); remove the sliding window settings")
    return problems


def check_calibratable(resolved: Any) -> None:
    """Refuse a recipe that cannot be calibrated, every problem at once."""
    problems = calibration_problems(resolved)
    if problems:
        raise RecipeError(problems)


def calibrate(runs: Sequence[tuple[str, Plan]], cache: Any, bars: Any = None) -> CalibrationResult:
    """Run every plan's denoise ((prompt, plan) per run, the same model setup) with calibrations.

    Each plan's nodes before denoise run through the engine; its denoise runs in place, with a
    ``Calibration`` as each segment's step cache; nothing after denoise (decode, save) runs.
    """
    if not runs:
        raise ModelInputError("calibration: no runs; give at least one prompt")
    recorder = _Recorder()
    for i, (prompt, plan) in enumerate(runs):
        log.info("calibration.run", run=f"{i + 1}/{len(runs)}", prompt=prompt)
        ps = plan.get("denoise")
        step = _calibrating(ps, recorder)
        ex = Executor(_upstream(plan, ps), cache, bars=bars)
        ex.run()
        step.run(_DenoiseContext(ex, ps))
    experts = tuple(sorted(recorder.experts.values(), key=lambda e: e.start))
    steps = len(experts[0].calibration.timesteps)  # every segment's calibration holds the whole schedule
    return CalibrationResult(experts, tuple(prompt for prompt, _ in runs), steps)


def check_enough_steps(plan: Plan, runs: int, where: str) -> None:
    """Refuse, before any model loads, a schedule whose expert segments give too few step pairs
    to fit TeaCache's polynomial (a pair needs two consecutive steps of one DiT)."""
    ps = plan.get("denoise")
    step = _calibrating(ps, _Recorder())
    p = ps.params
    if isinstance(step, CalibratingLongCatDenoise):  # one DiT over the whole schedule
        segments, cfgs = [("dit", 0, step.schedule(p, _PlannedWeights(ps)).steps)], {"dit": float(p["sampler.cfg"])}
    else:
        schedule = step.schedule(p)
        segments, cfgs = step._segments_from(p, schedule, 0), expert_cfgs(p, step.roles)
    for role, begin, stop in segments:
        pairs = (stop - begin - 1) * (1 if cfgs[role] == 1.0 else 2) * runs
        if pairs <= DEGREE:
            raise RecipeError(
                f"{where}: [sampler].steps = {p['sampler.steps']}: {role} runs {stop - begin} step(s) "
                f"[{begin}, {stop}), which over {runs} run(s) give {pairs} step pairs; a degree-{DEGREE} "
                "fit needs at least 5: raise sampler.steps (--set sampler.steps=N) or --runs")


def _calibrating(ps: PlannedStep, recorder: _Recorder) -> CalibratingDenoise | CalibratingLongCatDenoise:
    """The planned denoise step turned into its calibrating twin (same fields)."""
    step = ps.spec.step
    if type(step) is LongCatDenoise:
        fields = {f.name: getattr(step, f.name) for f in attrs.fields(LongCatDenoise)}
        return CalibratingLongCatDenoise(**fields, recorder=recorder)
    if not isinstance(step, Denoise):
        raise EngineError(f"calibration: the denoise step is a {type(step).__name__}, not wanflow's "
                          "Denoise; its family's pipeline cannot be calibrated")
    fields = {f.name: getattr(step, f.name) for f in attrs.fields(Denoise)}
    return CalibratingDenoise(**fields, recorder=recorder)


def _upstream(plan: Plan, ps: PlannedStep) -> Plan:
    """The plan cut to the nodes ``ps`` depends on, in a scope of its own (a calibration's
    prompts do not become the recipe's last run for ``wanflow explain``)."""
    needed, changed = set(ps.spec.inputs.values()), True
    while changed:
        before = len(needed)
        for s in plan.steps:
            if s.name in needed:
                needed |= set(s.spec.inputs.values())
        changed = len(needed) != before
    return attrs.evolve(plan, scope=f"{plan.scope}|calibrate",
                        steps=tuple(s for s in plan.steps if s.name in needed))
