"""The memory plan of one job, before anything loads: budgets, sizes, activations → placements.

The inputs come from the recipe (`[memory]` budgets and policy, `[models.X].device`), the
checkpoint headers (each component's bytes, the DiT's per block) and the activation estimates of
``wanflow.memory.estimates`` at the recipe's size. ``wanflow.memory.planner`` decides; a plan that
cannot fit is refused here, with the numbers and the cheapest change, before any weight is read.
Placement never changes the numbers, so none of this is in a step key.

A training job adds its train step (``train_step_peak``): the DiTs it trains, resident or with a
LoRA's frozen base streaming its last blocks where the policy asks (``train_stream_plan``), their
trained state and the activations of the dataset's largest bucket (``wanflow.memory.train_estimate``);
a train step that cannot fit is refused the same way, naming the changes that would fit.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from wanflow.errors import display_path
from wanflow.memory.estimates import (
    FP32,
    dit_forward_bytes,
    dit_tokens,
    latent_grid,
    text_encode_bytes,
    vae_decode_bytes,
)
from wanflow.memory.motion_estimate import face_crops, motion_encoder_bytes
from wanflow.memory.planner import (
    Budgets,
    MemoryPlan,
    MemoryPlanError,
    StepDemand,
    StepPeak,
    plan,
)
from wanflow.memory.s2v_estimate import s2v_forward_bytes
from wanflow.memory.sizes import (
    ComponentSize,
    block_index,
    component_size,
    dit_shapes,
    read_headers,
)
from wanflow.memory.stream_estimate import joined_blocks, reference_forward_bytes
from wanflow.memory.train_estimate import (
    Parts,
    Trained,
    TrainPeak,
    TrainSetup,
    lora_adapters,
    spread,
    train_peak,
)
from wanflow.memory.train_sides import side_blocks, untrained_prefixes
from wanflow.memory.train_stream_estimate import streamed_peak
from wanflow.models import animate_config
from wanflow.models.animate_config import MOTION_PREFIX
from wanflow.models.dit_config import DitConfig, from_shapes, keeps_fp32
from wanflow.models.dit_names import holds_s2v_parts
from wanflow.models.full_training import stream_name, trained_prefixes, trains
from wanflow.models.s2v_config import keeps_fp32 as s2v_keeps_fp32
from wanflow.steps.denoise import expert_cfgs
from wanflow.steps.train_checks import trained_dits
from wanflow.steps.train_conditioning import trained_parts
from wanflow.steps.train_targets import matches

GIB = 1024**3
#: Host memory kept free for the OS, the interpreter and the libraries when no budget is given.
HOST_MARGIN = 0.10
DIT_ROLES = ("dit", "dit_high_noise", "dit_low_noise")
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}


def host_budget(values: Mapping[str, Any], device: str) -> int:
    """``[memory].host_limit_gb``; on a CPU run ``limit_gb`` too; else the machine's RAM less a margin."""
    limit = values.get("memory.host_limit_gb")
    if limit is None and device == "cpu":
        limit = values.get("memory.limit_gb")
    if limit is not None:
        return int(limit * GIB)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * (1 - HOST_MARGIN))


def device_budget(values: Mapping[str, Any], device: str) -> int | None:
    """``[memory].limit_gb``, else the GPU's memory; None for a CPU-only run."""
    if device == "cpu":
        return None
    if values.get("memory.limit_gb") is not None:
        return int(values["memory.limit_gb"] * GIB)
    import torch

    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def component_sizes(files: Mapping[str, Sequence[Path]], itemsize: int, fp8: bool) -> list[ComponentSize]:
    """Each component's bytes at the run's dtype: from safetensors headers (the DiT per block),
    else the files' sizes (a .pth is sized by its bytes)."""
    out = []
    for name, paths in files.items():
        tensors = [p for p in paths if Path(p).suffix == ".safetensors"]
        if tensors:
            size = component_size(name, read_headers(tensors), itemsize,
                                  keeps_fp32=dit_keeps_fp32 if name in DIT_ROLES else keeps_fp32,
                                  blocks=name in DIT_ROLES)
            out.append(size.as_fp8() if fp8 and name in DIT_ROLES else size)
        else:
            out.append(ComponentSize(name, sum(Path(p).stat().st_size for p in paths)))
    return out


def dit_keeps_fp32(name: str) -> bool:
    """Whether a DiT tensor is held in fp32 whatever the run's dtype: a Wan DiT's islands (Animate's
    included), and S2V's audio encoder, which its loader keeps fp32 (a name no other DiT has)."""
    return s2v_keeps_fp32(name)


def step_demands(job: Any, dit_config: DitConfig, itemsize: int, vae_version: str,
                 dit_names: Collection[str] = ()) -> list[StepDemand]:
    """The steps that load models, with their activation estimates at the recipe's size;
    ``dit_names``: the DiT checkpoint's tensor names, which tell a derivative DiT (``denoise_bytes``)."""
    v = job.values
    frames, height, width = v["video.frames"], v["video.height"], v["video.width"]
    grid = latent_grid(frames, height, width, vae_version)
    dits = tuple(d for d in DIT_ROLES if d in job.weights)
    guided = any(cfg != 1.0 for cfg in expert_cfgs(v, dits).values())
    tile = tuple(v["vae.tile_size"]) if v["vae.tiled"] else None
    stride = 8 if vae_version == "wan2.1" else 16
    pixels_tile = (min(tile[0] * stride, height), min(tile[1] * stride, width)) if tile else None
    demands = [StepDemand("encode-text", ("text_encoder",),
                          int(text_encode_bytes(itemsize=itemsize) * text_encoder_fraction(job)))]
    if "image_encoder" in job.weights:
        demands.append(StepDemand("encode-image", ("image_encoder",), 0))
    batch = 2 if guided and v["sampler.cfg_merge"] else 1  # cfg_merge: both passes in one forward
    demands.append(StepDemand("denoise", dits, denoise_bytes(
        dit_config, dit_names, grid, itemsize, prepared_contexts=2 if guided else 1, batch=batch)))
    demands.append(StepDemand("decode", ("vae",), vae_decode_bytes(
        vae_version, 96, frames, height, width, itemsize, tile=pixels_tile)))
    return demands


def denoise_bytes(config: DitConfig, names: Collection[str], grid: tuple[int, int, int], itemsize: int,
                  prepared_contexts: int, batch: int = 1) -> int:
    """One denoise forward's activations, for the DiT whose checkpoint holds the tensors ``names``:
    a Wan DiT's, with a reference stream beside the video (Video-As-Prompt), or with S2V's
    reference and motion tokens; ``batch`` 2 where cfg_merge runs both guidance passes at once."""
    per_token_time = config.model_type == "ti2v"
    joined = joined_blocks(names)
    if joined:
        return reference_forward_bytes(config, grid, itemsize, joined, batch=batch,
                                       prepared_contexts=prepared_contexts, per_token_time=per_token_time)
    if holds_s2v_parts(names):
        return s2v_forward_bytes(config, grid, itemsize, batch=batch, prepared_contexts=prepared_contexts)
    return dit_forward_bytes(config, grid, itemsize, batch=batch, prepared_contexts=prepared_contexts,
                             per_token_time=per_token_time)


#: Bytes of the released umT5-XXL encoder in bf16, the size the text-encode estimate is made for.
UMT5_XXL_BYTES = 11.4e9


def text_encoder_fraction(job: Any) -> float:
    """The text encoder's size relative to umT5-XXL (≤ 1): the estimate's activations are umT5-XXL's
    and scale with its width, so a smaller encoder (a test or quickstart one) needs less."""
    files = [w.path for w in job.weights["text_encoder"].values()]
    return min(1.0, sum(Path(f).stat().st_size for f in files) / UMT5_XXL_BYTES)


def memory_plan(job: Any, device: str, dtype_name: str, vae_version: str) -> MemoryPlan:
    """The job's plan (``wanflow.memory.planner.plan``), or MemoryPlanError with the numbers."""
    v = job.values
    itemsize = ITEMSIZE.get(dtype_name, 4)
    files = {name: [w.path for w in weights.values()] for name, weights in job.weights.items()
             if name not in ("lora", "train_files")}  # LoRA files patch a DiT; they are not models
    dit = next(d for d in DIT_ROLES if d in files)
    shapes = dit_shapes(files[dit])
    config = from_shapes(shapes, str(files[dit][0]))
    budgets = Budgets(device_budget(v, device), host_budget(v, device))
    on_host = frozenset(name for name in files if job.device(name) == "cpu") if device != "cpu" else frozenset()
    sizes = component_sizes(files, itemsize, bool(v["memory.fp8"]))
    whole = _unstreamable_dits(v, {d: files[d] for d in DIT_ROLES if d in files})
    sizes = [attrs.evolve(s, block_bytes=(), fp8_block_bytes=()) if s.name in whole else s for s in sizes]
    found = plan(budgets, v["memory.policy"], sizes, step_demands(job, config, itemsize, vae_version, shapes),
                 host_compute=on_host)
    if job.resolved.recipe.train is None:
        return found
    train = train_step_peak(job, config, itemsize, device, vae_version, found.budgets)
    return attrs.evolve(found, peaks=(*found.peaks, train))


def _unstreamable_dits(values: Mapping[str, Any], dits: Mapping[str, Sequence[Path]]) -> set[str]:
    """The DiTs whose blocks cannot be streamed yet, so the planner moves them whole (offload) or
    refuses with the numbers, never streams them: blocks compiled (``[runtime].compile``) under a
    torch older than 2.5 (``pool.compiled_blocks_stream``), or a DiT its own loader loads whole
    (``memory/dit_variants.py``). Blocks kept in fp8 (``[memory].fp8``) stream as fp8
    (``memory.fp8_placed``), sized at their fp8 bytes."""
    from wanflow.memory.dit_variants import variant_of
    from wanflow.memory.pool import compiled_blocks_stream

    if values.get("runtime.compile", "none") != "none" and not compiled_blocks_stream():
        return set(dits)
    return {d for d, paths in dits.items() if (variant := variant_of(paths)) is not None and not variant.streams}


# ----------------------------------------------------------------------------- the train step


class SizedTrain(Protocol):
    """What a train step's refusal reads of its job (``TrainJob``, or another DiT's of the same
    shape): the settings a fix changes, and ``peak`` re-estimated with those changes."""

    dit_files: Mapping[str, Sequence[Path]]
    bucket: str
    device_run: bool
    method: str
    batch: int
    checkpointing: bool
    offload: bool
    fp8: bool
    fp8_storable: ClassVar[bool]

    def peak(self, **changes: Any) -> TrainPeak: ...


@attrs.frozen(kw_only=True)
class TrainSettings:
    """What every family's train-step estimate reads from a training job: its DiT files, the
    dataset's largest bucket and the [train] settings a refusal may change (``peak(**changes)``)."""

    dit_files: Mapping[str, Sequence[Path]]  # every DiT the step holds (A14B: both experts)
    grid: tuple[int, int, int]  # the largest bucket's latent grid (a continuation's frames included)
    bucket: str  # its name, WIDTHxHEIGHTxFRAMES
    itemsize: int  # the run's compute dtype
    device_run: bool
    accumulation: int
    processes: int = 1  # processes of a distributed run (``train_estimate.spread``)
    distribution: str = "none"
    targets: tuple[str, ...]
    rank: int
    method: str
    batch: int
    checkpointing: bool
    offload: bool
    fp8: bool = False  # [memory].fp8: a LoRA's frozen base with its block projections in fp8
    #: Whether [memory].fp8 can store the frozen base in fp8 (a refusal may offer it).
    fp8_storable: ClassVar[bool] = True
    #: Whether the frozen base's blocks can stream (``train_stream_plan.streamable``); the last
    #: blocks of each DiT streamed, and their tier ("host" or "disk").
    streamable: bool = False
    streamed: int = 0
    stream_tier: str = "host"


@attrs.frozen(kw_only=True)
class TrainJob(TrainSettings):
    """A Wan DiT's train step; ``peak`` re-estimates it with changed [train] settings (the
    changes a refusal offers)."""

    config: DitConfig
    forwards: int = 1  # DiT passes per micro-batch (direct distillation: the student's steps)
    #: A component trained alone beside the frozen DiT (speed control's controller): its files.
    part_files: Mapping[str, Sequence[Path]] = attrs.field(factory=dict)

    @property
    def layers(self) -> int:
        """Blocks of each trained DiT (what ``train_stream_plan`` streams the last of)."""
        return self.config.num_layers

    def peak(self, **changes: Any) -> TrainPeak:
        job = attrs.evolve(self, **changes)
        lora = job.method == "lora"
        dits, adapters, adapted, blocks = [], None, [], []
        for role, files in job.dit_files.items():
            size = component_sizes({role: files}, job.itemsize if lora else FP32, job.fp8 and lora)[0]
            blocks.append(size.block_bytes)
            shapes = dit_shapes(files)
            if lora:
                adapted = adapted_weights(shapes, job.targets)
                adapters, params, block = lora_adapters(linear_weights(shapes), adapted, job.rank)
                dits.append(Trained(size.weight_bytes, params, block, job.config.num_layers))
            elif job.part_files:  # the DiT frozen in fp32, the part alone trained
                trained, parts = parts_alone(job.part_files, job.config.num_layers)
                dits.append(attrs.evolve(trained, weight_bytes=size.weight_bytes + trained.weight_bytes))
            else:
                trained, parts = full_trained(shapes, job.config.num_layers, job.grid[0])
                dits.append(attrs.evolve(trained, weight_bytes=size.weight_bytes))
        setup = TrainSetup(job.method, job.batch, job.grid, job.itemsize if lora else FP32, job.checkpointing,
                           job.offload, adapters, per_token_time=job.config.model_type == "ti2v",
                           forwards=job.forwards, parts=None if lora else parts,
                           frozen_stream_blocks=joined_blocks(shapes) if lora else 0,
                           side_blocks=side_blocks(shapes, linear_weights(shapes), adapted, job.rank, job.method))
        loading = max(component_sizes({"dit": f}, FP32, False)[0].largest_tensor_bytes
                      for f in job.dit_files.values())
        found = train_peak(job.config, setup, dits, device_run=job.device_run,
                           accumulation=job.accumulation, loading_bytes=loading)
        found = streamed_peak(found, blocks, job.streamed, job.stream_tier, device_run=job.device_run)
        return spread(found, dits, job.distribution, job.processes)


def train_job(job: Any, config: DitConfig, itemsize: int, device: str, vae_version: str) -> TrainJob:
    """The train step's inputs: the [train] settings, the DiTs' files and the dataset's largest bucket."""
    from wanflow.steps.train_data import training_dataset

    v, t = job.values, job.resolved.recipe.train
    targets = [s.target for s in training_dataset(job.resolved).samples]
    grids = {s: latent_grid(s.frames, s.height, s.width, vae_version) for s in targets}
    largest = max(targets, key=lambda s: (dit_tokens(config, grids[s]), s))
    files = {d: [w.path for w in job.weights[d].values()] for d in trained_dits(job.resolved)}
    parts = {c: [w.path for w in job.weights[c].values()] for c in trained_parts(job)}
    from wanflow.steps.train_stream_plan import streamable

    return TrainJob(config=config, forwards=int(v["sampler.steps"]) if t.task == "direct_distill" else 1,
                    part_files=parts, streamable=streamable(t, v, files, parts),
                    **train_settings(t, v, files, grids[largest], largest.bucket, itemsize, device))


def train_settings(t: Any, values: Mapping[str, Any], files: Mapping[str, Sequence[Path]],
                   grid: tuple[int, int, int], bucket: str, itemsize: int, device: str) -> dict[str, Any]:
    """The ``TrainSettings`` fields of a job's [train] table (``t``), its DiT files and largest bucket."""
    return {"dit_files": files, "grid": grid, "bucket": bucket, "itemsize": itemsize, "device_run": device != "cpu",
            "accumulation": t.gradient_accumulation, "processes": t.processes if t.distribution != "none" else 1,
            "distribution": t.distribution,
            "targets": tuple(t.lora_targets), "rank": t.lora_rank, "method": t.method, "batch": t.batch_size,
            "checkpointing": t.gradient_checkpointing, "offload": t.offload_activations,
            "fp8": bool(values["memory.fp8"])}


def train_step_peak(job: Any, config: DitConfig, itemsize: int, device: str, vae_version: str,
                    budgets: Budgets) -> StepPeak:
    """The train step's predicted peak (with the frozen base's streamed blocks, where the policy
    streams them: ``train_stream_plan``), or MemoryPlanError naming the changes that fit."""
    from wanflow.steps.train_stream_plan import planned_train_step

    return planned_train_step(getattr(job.resolved, "path", None),
                              train_job(job, config, itemsize, device, vae_version), budgets, job.values["memory.policy"])


def sized_train_step(path: Any, train: SizedTrain, budgets: Budgets) -> StepPeak:
    """The peak of a train step, or MemoryPlanError naming the changes that fit."""
    found = train.peak()
    if _fits(found, budgets):
        return StepPeak("train", found.device_bytes, found.host_bytes)
    raise _train_refusal(path, train, found, budgets)


def _fits(peak: TrainPeak, budgets: Budgets) -> bool:
    return peak.host_bytes <= budgets.host_bytes and (
        budgets.device_bytes is None or peak.device_bytes <= budgets.device_bytes)


def _train_fixes(train: SizedTrain, budgets: Budgets) -> list[str]:
    """Single [train] or [memory] changes that fit, cheapest first."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if not train.checkpointing:
        changes.append(("[train].gradient_checkpointing = true", {"checkpointing": True}))
    if train.device_run and not train.offload:
        changes.append(("[train].offload_activations = true", {"offload": True}))
    from wanflow.steps.train_stream_plan import stream_fix

    changes += stream_fix(train, budgets)  # the frozen base's blocks streamed (same numbers)
    smaller = next((b for b in range(train.batch - 1, 0, -1) if _fits(train.peak(batch=b), budgets)), None)
    if smaller is not None:
        text = f"[train].batch_size = {smaller} (gradient_accumulation keeps the effective batch)"
        changes.append((text, {"batch": smaller}))
    if train.method == "lora" and not train.fp8 and train.fp8_storable:
        changes.append(("[memory].fp8 = true (the frozen base stored in fp8)", {"fp8": True}))
    if train.method == "full":
        changes.append(('[train].method = "lora"', {"method": "lora"}))
    return [text for text, change in changes if _fits(train.peak(**change), budgets)]


def _train_refusal(path: Any, train: SizedTrain, peak: TrainPeak, budgets: Budgets) -> MemoryPlanError:
    """The error when the train step cannot fit: where it falls short, what it holds, what would fit."""
    device_short = budgets.device_bytes is not None and peak.device_bytes > budgets.device_bytes
    host_short = peak.host_bytes > budgets.host_bytes
    short = [f"{_gib(peak.device_bytes)} of device memory, the budget is {_gib(budgets.device_bytes)}"] * \
        device_short + [f"{_gib(peak.host_bytes)} of host memory, the budget is {_gib(budgets.host_bytes)}"] * host_short
    dits = len(train.dit_files)
    parts = (f"{_gib(peak.weights)} weights of {dits} DiT{'s' * (dits > 1)}, {_gib(peak.state)} trained state, "
             f"{_gib(peak.activations)} activations of {train.batch} clip{'s' * (train.batch > 1)} of the "
             f"largest bucket {train.bucket}" + (f"; {_gib(peak.checkpoint)} to build a checkpoint" if host_short else ""))
    budget = " and ".join([f"a device budget ([memory].limit_gb) of {_gib(peak.device_bytes)}"] * device_short +
                          [f"a host budget ([memory].host_limit_gb) of {_gib(peak.host_bytes)}"] * host_short)
    fixes = [*_train_fixes(train, budgets), budget]
    advice = f"the cheapest change that fits: {fixes[0]}" + (
        f" (also: {'; '.join(fixes[1:])})" if fixes[1:] else "")
    if len(fixes) == 1:
        levers = "batch_size 1, fp8 storage or LoRA" if train.fp8_storable else "batch_size 1 or LoRA"
        advice = (f"no [train] change alone fits: combine gradient_checkpointing, offload_activations, {levers}, "
                  f"train on smaller clips ([train].max_pixels, width/height, frames), "
                  f"or use {budget}")
    where = f"{display_path(path)}: " if path else ""
    return MemoryPlanError(f"{where}[train]: the train step needs {' and '.join(short)} ({parts}); {advice}.",
                           fixes)


def linear_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Every Linear of a DiT (a 2-D ``.weight``): module name -> (out, in)."""
    return {k.removesuffix(".weight"): s for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2}


def adapted_weights(shapes: Mapping[str, tuple[int, ...]], targets: Sequence[str]) -> list[str]:
    """The Linears a LoRA's targets match (peft's suffix rule, as the training run applies it)."""
    return [name for name in linear_weights(shapes) if any(matches(name, t) for t in targets)]


def full_trained(shapes: Mapping[str, tuple[int, ...]], layers: int,
                 latent_frames: int = 1) -> tuple[Trained, Parts | None]:
    """What full fine-tuning trains of a DiT (its weight bytes left 0), from its header's shapes:
    every parameter, or those under the prefixes ``wanflow.models.full_training`` names for it
    (``Parts``: the blocks they sit in, ``blocks.N.`` of the stack or ``<stream>.blocks.N.`` of a
    second stream; blocks beside the stack, ``<name>_blocks.N.``; a trained motion encoder, run
    over the face crops of a clip of ``latent_frames``)."""
    untrained = untrained_prefixes(shapes)  # S2V's frame packer, which a sample never runs
    named = {stream_name(k): math.prod(s) for k, s in shapes.items() if not k.startswith(untrained)}
    prefixes = trained_prefixes(named)
    named = {name: count for name, count in named.items() if trains(name, prefixes)}
    per_block: dict[tuple[bool, int], int] = {}
    for name, count in named.items():
        index = block_index(name)
        if index is not None:
            key = (name.startswith("blocks."), index)
            per_block[key] = per_block.get(key, 0) + count
    params = sum(named.values())
    if not prefixes:
        return Trained(0, params, per_block.get((True, 0), 0), layers), None
    trained = Trained(0, params, max(per_block.values(), default=0), len(per_block))
    stack = sum(main for main, _ in per_block)
    side = len({found.group(0) for name in named if (found := SIDE_BLOCK.search(name))})
    return trained, Parts(stack, len(per_block) - stack, side, _encoder_bytes(shapes, named, latent_frames))


def parts_alone(files: Mapping[str, Sequence[Path]], layers: int) -> tuple[Trained, Parts]:
    """A component trained alone beside a frozen DiT (``FamilySpec.trainable_parts``), from its
    header: its fp32 weights (in ``weight_bytes``) and parameters; no block of the stack trains,
    but every one passes the gradient through to its modulation, which the part's offset joins."""
    state = read_headers(p for paths in files.values() for p in paths)
    params = sum(math.prod(info.shape) for info in state.values())
    return Trained(params * FP32, params, 0, layers), Parts(0, modulated=True)


#: A block of a module list beside the stack (Animate's ``face_adapter.fuser_blocks.N.``).
SIDE_BLOCK = re.compile(r"(?:^|\.)\w+_blocks\.\d+\.")


def _encoder_bytes(shapes: Mapping[str, tuple[int, ...]], trained: Collection[str], latent_frames: int) -> int:
    """What a trained motion encoder (Animate's) keeps over one clip's face crops, in fp32."""
    if not any(name.startswith(MOTION_PREFIX) for name in trained):
        return 0
    motion = animate_config.from_shapes(shapes, "the Animate DiT").motion
    return motion_encoder_bytes(motion, face_crops(latent_frames), FP32)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"
