"""The Wan pipeline: from a resolved recipe and its family's data to the DAG of real steps.

encode-text (positive; negative unless every cfg is 1) → one node per declared conditioner the
job gives work (CLIP tokens, image channels, first frame, control video, input video…) → denoise
→ decode → save. What runs is read off the family (components, conditioners, VAE), not branched
on its name. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import structlog

from wanflow.conditioners import starts_from_latent
from wanflow.engine.step import Catalog, StepSpec, WeightFile
from wanflow.errors import ModelLoadError, RecipeError
from wanflow.memory.pool import Residency
from wanflow.steps.checks import unsupported
from wanflow.steps.cond_kinds import nodes as conditioner_nodes
from wanflow.steps.decode import Decode
from wanflow.steps.denoise import Denoise, expert_cfgs
from wanflow.steps.files import check_dit
from wanflow.steps.loras import check_loras, lora_uses, resolve_loras
from wanflow.steps.runtime import describe_runtime, dit_storage, effective_device
from wanflow.steps.save import SaveFrames, SaveMetadata, SaveVideo
from wanflow.steps.text import EncodeText

log = structlog.get_logger(__name__)

Weights = dict[str, WeightFile]
Z_DIM = {"wan2.1": 16, "wan2.2": 48}  # latent channels per VAE version


def vae_version(architecture: str) -> str:
    """``wan2.2-vae`` → ``wan2.2``; everything else is the Wan2.1 VAE (tiny ones included)."""
    return "wan2.2" if architecture.startswith("wan2.2") else "wan2.1"


@attrs.frozen
class _Job:
    """One resolved recipe with its components' files found, as the node builders need it."""

    resolved: Any
    weights: Mapping[str, Weights]  # component -> role -> file
    catalog: Catalog  # the plugin registry: savers and solvers, with their plugin@version
    residency: Any = None  # what the model pool may keep loaded (memory.Residency), when known
    memory: Any = None  # the memory plan (wanflow.memory.planner.MemoryPlan), when known

    @property
    def values(self) -> Mapping[str, Any]:
        return self.resolved.values

    @property
    def family(self) -> Any:
        return self.resolved.family

    def given(self, name: str) -> bool:
        return self.values.get(f"inputs.{name}") is not None

    def file(self, name: str) -> Path:
        return Path(self.values[f"inputs.{name}"])

    def dits(self) -> tuple[str, ...]:
        return tuple(self.family.experts) or ("dit",)

    def dtype(self, component: str) -> str:
        """``[models.<component>].dtype`` ("auto" unless the recipe overrides the component)."""
        return self._override(component, "dtype")

    def device(self, component: str) -> str:
        """``[models.<component>].device`` ("auto": the run's device)."""
        return self._override(component, "device")

    def _override(self, component: str, field: str) -> str:
        override = self.resolved.recipe.models.get(component)
        return getattr(override, field) if override is not None else "auto"

    def peak(self, step: str) -> Any:
        """The memory plan's predicted peak of a step ("encode-text", "denoise", "decode")."""
        if self.memory is None:
            return None
        return next((p for p in self.memory.peaks if p.step == step), None)

    def placed(self, component: str) -> dict[str, Any]:
        """The per-component fields of a model step: dtype and device (keyed), pool budget (not)."""
        return {"dtype": self.dtype(component), "device": self.device(component),
                "residency": self.residency}

    def provided(self, what: str, name: str) -> tuple[Any, tuple[str, ...]]:
        """A registered saver/sampler and the ``uses`` of a node that runs it."""
        found, provider = self.catalog.provided(what, name)
        return found, (provider,) if provider else ()

    @property
    def vae_version(self) -> str:
        return vae_version(self.family.components["vae"].architecture)

    @property
    def z_dim(self) -> int:
        return Z_DIM[self.vae_version]

    def vae_weight(self) -> Weights:
        return {"vae": next(iter(self.weights["vae"].values()))}

    def latent_shape(self, channels: int) -> tuple[int, int, int, int, int]:
        """(1, channels, T, h, w) of this job's clip in latent frames and VAE pixels."""
        stride = self.family.spatial_factor // 2  # VAE pixels per latent (the DiT patches 2×2)
        v = self.values
        return (1, channels, (v["video.frames"] - 1) // 4 + 1, v["video.height"] // stride, v["video.width"] // stride)


def resolve_weights(resolved: Any, fetch: bool = True) -> dict[str, Weights]:
    """Every component's files, as weight roles ``<component>.<i>``.

    ``fetch``: download what is missing, and refuse with ONE message naming every component that
    cannot be found. Without it (explain, diff, --dry-run) nothing is downloaded and a missing
    component gets one placeholder weight marked not present: the plan is still made, and the
    steps that need it are reported as "will run: weights not present".
    """
    from wanflow.sources import resolve_component

    overrides = resolved.recipe.models
    base = Path(resolved.path).parent
    out: dict[str, Weights] = {}
    missing: list[str] = []
    left_out = _untrained_experts(resolved)  # one A14B expert trained alone: the other is neither fetched nor read
    for name, component in resolved.family.components.items():
        if name in left_out:
            continue
        o = overrides.get(name)
        try:
            found = resolve_component(component, (o.source, o.files) if o else None, base_dir=base,
                                      name=name, offline=None if fetch else True)
        except ModelLoadError as exc:
            missing.append(str(exc))
            source = o.source if o and o.source else component.source
            out[name] = {f"{name}.0": WeightFile(Path(name), source, "", present=False)}
            continue
        out[name] = {f"{name}.{i}": WeightFile(f, found.source, found.revision or "")
                     for i, f in enumerate(found.files)}
        if name in ("dit", "dit_high_noise", "dit_low_noise"):
            check_dit(found.files, component.architecture, name)
    if resolved.recipe.lora:
        out["lora"], lora_missing = resolve_loras(resolved, fetch)
        missing += lora_missing
    if resolved.recipe.train is not None:
        out["train_files"] = _train_files(resolved)
    if missing and fetch:
        raise ModelLoadError(f"{display_name(resolved)}: {len(missing)} model component(s) cannot be "
                             "used yet:\n" + "\n".join(f"- {m}" for m in missing))
    return out


def _untrained_experts(resolved: Any) -> tuple[str, ...]:
    """A14B's expert a training run leaves out (``[train].components`` names the other); ()."""
    from wanflow.steps.train_checks import trained_dits

    if resolved.recipe.train is None or not resolved.family.experts:
        return ()
    return tuple(e for e in resolved.family.experts if e not in trained_dits(resolved))


def _train_files(resolved: Any) -> Weights:
    """The LoRA files a training stage starts from (``lora_init``) or merges first (``preset_lora``)."""
    t = resolved.recipe.train
    base = Path(resolved.path).parent
    return {name: WeightFile(base / getattr(t, name), "local") for name in ("lora_init", "preset_lora")
            if getattr(t, name)}


def display_name(resolved: Any) -> str:
    return str(getattr(resolved, "path", "") or resolved.name)


def _text_nodes(job: _Job) -> list[StepSpec]:
    te = job.weights["text_encoder"]
    weights = {"text_encoder": next(iter(te.values())),
               **{f"tokenizer.{i}": w for i, w in enumerate(job.weights["tokenizer"].values())}}
    own = {"dtype": job.dtype("text_encoder"), "device": job.device("text_encoder"),
           "residency": job.residency, "peak": job.peak("encode-text")}
    text = EncodeText("prompt.text", job.values["prompt.text"], **own)
    nodes = [StepSpec("encode-text:positive", text, weights=weights)]
    if any(c != 1.0 for c in expert_cfgs(job.values, job.dits()).values()):
        negative = EncodeText("prompt.negative", job.values["prompt.negative"], **own)
        nodes.append(StepSpec("encode-text:negative", negative, weights=weights))
    return nodes


def _conditioning_nodes(job: _Job) -> list[tuple[str, StepSpec]]:
    """(denoise role, node) of each declared conditioner the job gives work, in declared order.

    A kept source (``denoising_strength < 1``) that no conditioner of the family starts from
    would be silently ignored: refused instead."""
    found = conditioner_nodes(job, job.family.conditioners)
    strength = job.values["sampler.denoising_strength"]
    if strength < 1.0 and not starts_from_latent(c.role for c in job.family.conditioners):
        raise RecipeError([(f"{job.resolved.path}: [sampler].denoising_strength = {strength}: the family "
                            f"{job.family.name} cannot start from an input; use 1.0")])
    return found


def _denoise_node(job: _Job, texts: list[StepSpec], conditioning: list[tuple[str, StepSpec]]) -> StepSpec:
    roles = {"encode-text:positive": "pos", "encode-text:negative": "neg"}
    inputs = {roles[s.name]: s.name for s in texts} | {role: s.name for role, s in conditioning}
    weights = {role: w for d in job.dits() for role, w in job.weights[d].items()}
    loras = lora_uses(job.resolved, job.dits())
    weights |= {role: job.weights["lora"][role] for role, _, _ in loras}
    entry, uses = job.provided("sampler", job.values["sampler.solver"])
    attention = job.values["runtime.attention"]
    uses += job.catalog.attention_uses(attention)  # a plugin backend's version changes the numbers
    step = Denoise(experts=tuple((d, len(job.weights[d])) for d in job.dits()),
                   z_dim=job.z_dim, latent_stride=job.family.spatial_factor // 2,
                   conditions=tuple(role for role, _ in conditioning), solver=entry,
                   dtypes=tuple((d, job.dtype(d)) for d in job.dits() if job.dtype(d) != "auto"),
                   loras=loras, storage=dit_storage(job.values),
                   residency=job.residency, tiers=_tiers(job.memory, job.dits()), peak=job.peak("denoise"),
                   attention=job.catalog.attention_backend(attention))
    return StepSpec("denoise", step, inputs=inputs, weights=weights, uses=uses)


def _output_nodes(job: _Job) -> list[StepSpec]:
    saver, uses = job.provided("saver", job.values["output.format"])
    decode = Decode(job.vae_version, **job.placed("vae"), peak=job.peak("decode"))
    nodes = [StepSpec("decode", decode, inputs={"latents": "denoise"}, weights=job.vae_weight()),
             StepSpec("save", SaveVideo(saver), inputs={"frames": "decode"}, uses=uses,
                      archive_as=f"video{saver.suffix}"),
             StepSpec("save-metadata", SaveMetadata(), archive_as="video.json")]
    if job.values["output.png_frames"]:
        nodes.append(StepSpec("save-frames", SaveFrames(), inputs={"frames": "decode"},
                              archive_as="frames.zip"))
    return nodes


def _report_loras(job: _Job) -> None:
    """Check every LoRA against its DiT before anything loads, and say what each patches."""
    uses = lora_uses(job.resolved, job.dits())
    if not uses or not all(w.present for weights in job.weights.values() for w in weights.values()):
        return
    dits = {d: [w.path for w in job.weights[d].values()] for d in job.dits()}
    for line in check_loras(uses, job.weights["lora"], dits, job.family.name):
        log.info("lora", applied=line)


def job_memory_plan(job: _Job) -> Any:
    """The job's memory plan (``wanflow.memory``), refused before any model loads when nothing
    fits; None when planning without the weights (their sizes are not known)."""
    from wanflow.steps.memory_plan import memory_plan
    from wanflow.steps.runtime import effective_dtype_name

    if not all(w.present for weights in job.weights.values() for w in weights.values()):
        return None
    device = effective_device(job.values["runtime.device"])
    dtype = effective_dtype_name(job.values["runtime.dtype"], device)
    return memory_plan(job, device, dtype, job.vae_version)


def _residency(job: _Job, plan: Any) -> Residency | None:
    """What the model pool keeps to: the plan's policy and the budget of the device it loads on."""
    if plan is None:
        return None
    budgets = plan.budgets
    return Residency(plan.policy, budgets.device_bytes if budgets.device_bytes is not None
                     else budgets.host_bytes)


def _tiers(plan: Any, dits: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each DiT's block tiers where some block is not resident ("host": copied in per block,
    "disk": read from the mapped file per block); empty when every block stays resident."""
    if plan is None:
        return ()
    out = []
    for dit in dits:
        tiers = tuple(plan.placement(dit).blocks)
        if any(t != "device" for t in tiers):
            out.append((dit, tiers))
    return tuple(out)


@attrs.frozen
class WanPipeline:
    """The steps of every Wan family (T2V, I2V, FLF2V, A14B, TI2V, V2V) and of the tiny one.

    The registry hands it out bound to itself (``bind``): savers and solvers, plugin ones
    included, are looked up here at planning and given to the steps with their plugin@version.
    """

    catalog: Catalog | None = None
    fetch: bool = True  # False: plan without downloading (missing weights marked not present)

    def bind(self, catalog: Catalog) -> WanPipeline:
        return attrs.evolve(self, catalog=catalog)

    def planning_only(self) -> WanPipeline:
        """This pipeline for explain, diff and --dry-run: it never downloads, and plans even
        when weights are missing."""
        return attrs.evolve(self, fetch=False)

    def check(self, resolved: Any) -> list[str]:
        return unsupported(resolved, self.catalog)

    def steps(self, resolved: Any) -> list[StepSpec]:
        if self.catalog is None:
            raise RuntimeError("WanPipeline.steps: unbound; get it from the plugin registry "
                               "(get_registry().pipeline(model)), which binds its savers and solvers")
        problems = unsupported(resolved, self.catalog)
        if problems:
            raise RecipeError(problems)
        job = _Job(resolved, resolve_weights(resolved, self.fetch), self.catalog)
        plan = self.job_plan(job)
        job = attrs.evolve(job, residency=_residency(job, plan), memory=plan)
        _report_loras(job)
        if resolved.recipe.train is not None:
            from wanflow.steps.train_plan import training_nodes

            return self.finish(job, training_nodes(job, job.vae_version, job.z_dim))
        texts, conditioning = _text_nodes(job), _conditioning_nodes(job)
        return self.finish(job, [*texts, *(s for _, s in conditioning), _denoise_node(job, texts, conditioning),
                                 *_output_nodes(job)])

    def finish(self, job: _Job, nodes: list[StepSpec]) -> list[StepSpec]:
        """The job's nodes as this pipeline runs them (a subclass swaps or adds steps)."""
        return nodes

    def job_plan(self, job: _Job) -> Any:
        """The memory plan the steps are placed by (a pipeline whose DiT the planner cannot size
        plans without one)."""
        return job_memory_plan(job)

    def memory_plan(self, resolved: Any) -> Any:
        """The memory plan of a job (``wanflow plan``); None when weights are missing here."""
        return job_memory_plan(_Job(resolved, resolve_weights(resolved, self.fetch), self.catalog))

    def describe(self, resolved: Any) -> dict[str, str]:
        """The lock's runtime table: effective device, dtype, attention backend and noise device."""
        return describe_runtime(resolved.values)


PIPELINES: dict[str, Any] = {"wan": WanPipeline()}
