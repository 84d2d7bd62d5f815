"""What a calibration hands the user: TOML keys to paste under ``[sampler.cache]``.

TeaCache reads ``mode``, ``coefficients = "calibrated"`` and ``calibrated`` (its polynomial);
MagCache reads ``ratios_cond`` and ``ratios_uncond`` (one γ per schedule step). Both sets are
written, so the user picks a method by its ``method`` and threshold alone.

For A14B each expert gets its own polynomial, fitted on its own steps: ``calibrated`` is the
low-noise expert's, ``calibrated_high_noise`` the high-noise expert's (the two DiTs' signals
relate to their outputs differently; one fit over both would serve neither). MagCache's ratios are
per schedule step, and each step belongs to one expert, so they are exactly per expert: each
step's value comes from the DiT that runs it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wanflow.steps.calibrate import DEGREE, CalibrationResult, ExpertCalibration

BRANCHES = ("cond", "uncond")
#: Ratios per line of the written arrays (a 50-step list stays readable).
PER_LINE = 6


def teacache_fits(experts: Sequence[ExpertCalibration], mode: str) -> dict[str, tuple[float, ...]]:
    """The ``[sampler.cache]`` key of each expert's polynomial (fitted on its own steps) -> it."""
    keys = {"dit": "calibrated", "dit_low_noise": "calibrated", "dit_high_noise": "calibrated_high_noise"}
    return {keys[e.role]: e.calibration.teacache_coefficients(mode, DEGREE) for e in experts}


def magcache_ratios(result: CalibrationResult) -> dict[str, list[float]]:
    """branch -> γ per schedule step, each step's from the expert that runs it (1.0 where no
    expert recorded it: steps before the first one run, or a branch an expert never runs)."""
    out = {}
    for branch in BRANCHES:
        values = [1.0] * result.steps
        recorded = False
        for e in result.experts:
            found = dict(e.calibration.magcache_ratios()).get(branch)
            if found is None:
                continue
            recorded = True
            values[e.start:e.stop] = found[e.start:e.stop]
        if recorded:
            out[branch] = values
    return out


def fragment(result: CalibrationResult, mode: str, values: Mapping[str, Any]) -> str:
    """The TOML keys (with comments saying where they come from and how to use them)."""
    lines = _header(result, values)
    lines += _per_expert_note(result, mode)
    ratios = magcache_ratios(result)
    lines += [f"mode = {_string(mode)}", 'coefficients = "calibrated"']
    lines += [f"{key} = {_array(fit)}" for key, fit in sorted(teacache_fits(result.experts, mode).items())]
    for branch in BRANCHES:
        if branch in ratios:
            lines.append(f"ratios_{branch} = {_wrapped(ratios[branch])}")
        else:
            lines.append(f"# ratios_{branch}: not recorded (cfg = 1 runs no {branch} pass); MagCache "
                         "needs both lists: give the other one's values, which no pass will read")
    return "\n".join(lines) + "\n"


def _header(result: CalibrationResult, v: Mapping[str, Any]) -> list[str]:
    guidance = f"cfg {v['sampler.cfg']}"
    if v.get("sampler.cfg_high_noise") is not None and len(result.experts) > 1:
        guidance += f" (high-noise expert {v['sampler.cfg_high_noise']})"
    return [
        f"# Step-cache calibration of {v['model']} by `wanflow cache calibrate` over {len(result.prompts)} run(s):",
        (f"#   {v['sampler.solver']}, {v['sampler.steps']} steps, shift {v['sampler.shift']}, {guidance}, "
         f"{v['video.width']}x{v['video.height']}, {v['video.frames']} frames, seed {v['sampler.seed']}."),
        "# Paste under [sampler.cache] and choose a method:",
        '#   method = "teacache" with threshold or target_speedup (reads mode, coefficients, calibrated);',
        '#   method = "magcache" with threshold, e.g. 0.12 (reads ratios_cond, ratios_uncond).',
        "# It fits this model, solver, step count and size: calibrate again when they change.",
    ]


def _per_expert_note(result: CalibrationResult, mode: str) -> list[str]:
    if len(result.experts) == 1:
        return []
    lines = ["# Each expert has its own TeaCache polynomial, fitted on its own steps:"]
    for e in result.experts:
        key = "calibrated_high_noise" if e.role == "dit_high_noise" else "calibrated"
        lines.append(f"#   {key}: {e.role} (steps {e.start}-{e.stop - 1})")
    lines.append("# ratios_cond and ratios_uncond are per step: each step's value is its own expert's.")
    return lines


def _string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _number(x: float) -> str:
    """A float that reads back exactly (Python's repr is TOML's float syntax for finite values)."""
    return repr(float(x))


def _array(values: Sequence[float]) -> str:
    return "[" + ", ".join(_number(x) for x in values) + "]"


def _wrapped(values: Sequence[float]) -> str:
    """A multi-line array, ``PER_LINE`` values a line."""
    rows = [", ".join(_number(x) for x in values[i:i + PER_LINE]) for i in range(0, len(values), PER_LINE)]
    return "[\n" + "".join(f"    {row},\n" for row in rows) + "]"
