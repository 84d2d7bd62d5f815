"""The pipeline of LongCat-Video: the Wan pipeline's steps, with LongCat's own denoise step.

Text encoding, the continuation's conditioning frames (``longcat-video``), decode and save are
the Wan pipeline's; denoise is ``denoise_longcat`` whatever the solver, since the DiT is LongCat's.
A long video (``[inputs].longcat_segments``) chains continuations after the first clip
(``steps/longcat_segments.py``); ``[inputs].longcat_refine`` adds the 720p refinement after it
(``steps/longcat_refine.py``), its LoRAs and grids checked here before any model loads.
Under the authors' solver the release's ``scheduler/scheduler_config.json`` (among the DiT
component's files) becomes the step's ``scheduler`` weight: its shift sets the grid, so its
digest is in the step's key; DiffSynth's configuration (``euler``) never reads it, and its key
does not hold it. The frames held clean are encoded to the VAE posterior's sample or mean
(``[inputs].longcat_cond_latents``, ``steps/longcat_posterior.py``); a continuation's video may
begin with the whole input video, as the authors' demo writes it (``steps/longcat_append.py``). The memory plan sizes
LongCat's DiT whole (``steps/longcat_memory.py``), and a training job's train step with it. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.engine.step import StepSpec
from wanflow.errors import ModelLoadError
from wanflow.families.longcat import AUTHORS_SOLVERS, SCHEDULER_CONFIG
from wanflow.steps.denoise_longcat import SCHEDULER, LongCatDenoise
from wanflow.steps.longcat_append import append_nodes
from wanflow.steps.longcat_posterior import posterior_mode, with_posterior
from wanflow.steps.longcat_segments import segment_count, segment_nodes
from wanflow.steps.pipeline import WanPipeline, _Job, resolve_weights
from wanflow.steps.runtime import effective_device


@attrs.frozen
class LongCatPipeline(WanPipeline):
    """``WanPipeline`` with LongCat's denoise step and LongCat's memory plan."""

    def finish(self, job: Any, nodes: list[StepSpec]) -> list[StepSpec]:
        resolved = job.resolved
        nodes = [longcat_node(n, resolved) if n.name == "denoise" else n for n in nodes]
        if resolved.recipe.train is not None:
            return nodes
        nodes = segment_nodes(nodes, resolved.values)  # a long video's chained clips
        nodes = refine_stage(job, nodes)  # the 720p refinement, when asked
        if resolved.recipe.inputs.longcat_video is not None:  # the input video before the new frames
            nodes = append_nodes(nodes, resolved.values, job.file("longcat_video"))
        return with_posterior(nodes, posterior_mode(resolved.values, training=False))  # sample or mean

    def job_plan(self, job: Any) -> Any:
        """LongCat's memory plan (MemoryPlanError, exit 2, when nothing fits); None when weights
        are missing here."""
        return longcat_job_plan(job)

    def memory_plan(self, resolved: Any) -> Any:
        """The memory plan of a job (``wanflow plan``), a training job's train step included."""
        return self.job_plan(_Job(resolved, resolve_weights(resolved, self.fetch), self.catalog))


def refine_stage(job: Any, nodes: list[StepSpec]) -> list[StepSpec]:
    """The nodes with the 720p refinement after the clip (``steps.longcat_refine``): its LoRAs
    are the ``[[lora]]`` tables whose target is "refine", checked against the DiT now; its grid
    takes the release's scheduler config whatever the clip's solver."""
    from wanflow.families.longcat import REFINE_STAGE
    from wanflow.steps.longcat_refine import (
        DECODE,
        DENOISE,
        check_refined_grids,
        clip_cond,
        refine_nodes,
    )
    from wanflow.steps.loras import check_loras, lora_uses

    if not job.values["inputs.longcat_refine"]:
        return nodes
    uses = tuple((role, "dit", scale) for role, _, scale in lora_uses(job.resolved, (REFINE_STAGE,)))
    lora_weights = {role: job.weights["lora"][role] for role, _, _ in uses}
    dit = job.weights["dit"]
    scheduler = next((w for w in dit.values() if w.path.name == SCHEDULER_CONFIG), None)
    if scheduler is None and all(w.present for w in dit.values()):
        raise ModelLoadError(f"[models.dit]: the refinement walks the authors' grid, whose shift is the release's "
                             f"scheduler/{SCHEDULER_CONFIG}, and none is among the DiT's files; add it to "
                             "[models.dit].files")
    if uses and all(w.present for weights in job.weights.values() for w in weights.values()):
        check_loras(uses, lora_weights, {"dit": [w.path for w in dit.values()]}, job.family.name)
    config = next((w for w in dit.values() if w.path.name == "config.json"), None)
    if config is not None and config.present:  # the DiT config's sparse attention fits the refined clips
        check_refined_grids(job.values, clip_cond(job.resolved.recipe.inputs), segment_count(job.values) > 0,
                            config.path)
    refined = refine_nodes(nodes, job.resolved, uses, lora_weights | ({SCHEDULER: scheduler} if scheduler else {}))
    out = []
    for n in refined:
        stage = n.name.rsplit("-", 1)[0]  # a long video's windows ("denoise:refine-2") peak as one clip's
        out.append(attrs.evolve(n, step=attrs.evolve(n.step, peak=job.peak(stage))) if stage in (DENOISE, DECODE) else n)
    return out


def longcat_job_plan(job: Any) -> Any:
    """The plan of a job whose weights are all here (None otherwise: their sizes are not known)."""
    from wanflow.steps.longcat_memory import longcat_memory_plan
    from wanflow.steps.runtime import effective_dtype_name

    if not all(w.present for weights in job.weights.values() for w in weights.values()):
        return None
    device = effective_device(job.values["runtime.device"])
    return longcat_memory_plan(job, device, effective_dtype_name(job.values["runtime.dtype"], device))


def longcat_node(denoise: StepSpec, resolved: Any) -> StepSpec:
    """The denoise node with LongCat's step; the scheduler config is its own weight when one of
    the authors' solvers reads it, and left out otherwise."""
    dit = {role: w for role, w in denoise.weights.items() if role.startswith("dit.")}
    scheduler = [role for role, w in dit.items() if w.path.name == SCHEDULER_CONFIG]
    files = [w for role, w in dit.items() if role not in scheduler]
    weights = {f"dit.{i}": w for i, w in enumerate(files)}
    weights |= {role: w for role, w in denoise.weights.items() if role.startswith("lora.")}  # [[lora]] files
    if resolved.values["sampler.solver"] in AUTHORS_SOLVERS:
        if not scheduler and all(w.present for w in files):
            raise ModelLoadError(f"[models.dit]: the authors' sampler reads the release's scheduler/{SCHEDULER_CONFIG} "
                                 "for its shift, and none is among the DiT's files; add it to [models.dit].files, "
                                 'or sample as DiffSynth does ([sampler].solver = "euler")')
        if scheduler:
            weights[SCHEDULER] = dit[scheduler[0]]
    continues = resolved.recipe.inputs.longcat_video is not None
    step = attrs.evolve(LongCatDenoise.replacing(denoise.step, tail=continues), dit_files=len(files))
    return attrs.evolve(denoise, step=step, weights=weights)
