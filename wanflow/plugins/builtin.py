"""wanflow's own families, samplers and savers, registered through the public hooks."""

from __future__ import annotations

import importlib
from typing import Any

from wanflow.families import tiny, wan
from wanflow.plugins.hookspecs import SamplerEntry, SaverEntry, hookimpl

NAME = "wanflow"


def _lazy(module: str, attr: str) -> Any:
    return lambda: getattr(importlib.import_module(module), attr)


@hookimpl
def wanflow_families() -> list:
    return [*wan.families(), tiny.family()]


def _builtin_solver(name: str) -> Any:
    return lambda: importlib.import_module("wanflow.sampling").BUILTIN_SOLVERS[name]


@hookimpl
def wanflow_samplers() -> list[SamplerEntry]:
    return [SamplerEntry("euler", _builtin_solver("euler"), "flow-matching Euler (DiffSynth's)"),
            SamplerEntry("unipc", _builtin_solver("unipc"), "UniPC (Zhao et al. 2023), official"),
            SamplerEntry("dpm++", _builtin_solver("dpm++"), "DPM-Solver++ 2M (Lu et al. 2022)")]


@hookimpl
def wanflow_pipelines() -> dict[str, Any]:
    from wanflow.steps.pipeline import PIPELINES  # light: step kinds import torch only when they run

    return dict(PIPELINES)


@hookimpl
def wanflow_savers() -> list[SaverEntry]:
    return [SaverEntry("mp4", ".mp4", _lazy("wanflow.output.video", "save_mp4"), "H.264 through imageio-ffmpeg")]
