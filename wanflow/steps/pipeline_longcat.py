"""The pipeline of LongCat-Video: the Wan pipeline's steps, with LongCat's own denoise step.

Text encoding, the continuation's conditioning frames (``longcat-video``), decode and save are
the Wan pipeline's; denoise is ``denoise_longcat`` whatever the solver, since the DiT is LongCat's.
Under the authors' solver the release's ``scheduler/scheduler_config.json`` (among the DiT
component's files) becomes the step's ``scheduler`` weight: its shift sets the grid, so its
digest is in the step's key; DiffSynth's configuration (``euler``) never reads it, and its key
does not hold it. The memory planner sizes Wan DiTs only: a LongCat job is planned without it
(the DiT loads whole). Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.families.longcat import SCHEDULER_CONFIG, SOLVER
from wanflow.steps.denoise_longcat import SCHEDULER, LongCatDenoise
from wanflow.steps.pipeline import WanPipeline


@attrs.frozen
class LongCatPipeline(WanPipeline):
    """``WanPipeline`` with LongCat's denoise step, planned without the (Wan-only) memory planner."""

    def steps(self, resolved: Any) -> list[StepSpec]:
        return [longcat_node(n, resolved) if n.name == "denoise" else n for n in super().steps(resolved)]

    def job_plan(self, job: Any) -> Any:
        """None: the memory planner reads Wan DiT configs off the headers, and LongCat's is not one."""
        return None

    def memory_plan(self, resolved: Any) -> Any:
        """Refused: the memory planner does not size LongCat's DiT yet (``wanflow plan`` says so)."""
        raise ModelInputError(f"{resolved.path}: the memory planner sizes Wan DiTs and cannot size {resolved.family.name}'s "
                              "yet; `wanflow run` loads its DiT whole on the run's device")


def longcat_node(denoise: StepSpec, resolved: Any) -> StepSpec:
    """The denoise node with LongCat's step; the scheduler config is its own weight when the
    authors' solver reads it, and left out otherwise."""
    dit = {role: w for role, w in denoise.weights.items() if role.startswith("dit.")}
    scheduler = [role for role, w in dit.items() if w.path.name == SCHEDULER_CONFIG]
    files = [w for role, w in dit.items() if role not in scheduler]
    weights = {f"dit.{i}": w for i, w in enumerate(files)}
    weights |= {role: w for role, w in denoise.weights.items() if role.startswith("lora.")}  # [[lora]] files
    if resolved.values["sampler.solver"] == SOLVER:
        if not scheduler and all(w.present for w in files):
            raise ModelLoadError(f"[models.dit]: the authors' sampler reads the release's scheduler/{SCHEDULER_CONFIG} "
                                 "for its shift, and none is among the DiT's files; add it to [models.dit].files, "
                                 'or sample as DiffSynth does ([sampler].solver = "euler")')
        if scheduler:
            weights[SCHEDULER] = dit[scheduler[0]]
    step = attrs.evolve(LongCatDenoise.replacing(denoise.step), dit_files=len(files))
    return attrs.evolve(denoise, step=step, weights=weights)
