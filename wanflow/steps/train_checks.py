"""What a ``[train]`` stage needs from files and installed packages, checked before any model loads.

The recipe-only checks live in ``wanflow.recipe.train_rules``; here are those that open something:
the dataset (every bad row at once), the DiT's checkpoint header (LoRA targets that match no
module), the LoRA files named to start from, and the packages that the chosen distribution and
optimizer run on. Torch is imported only for the LoRA dialects (the names a LoRA can be written
as, the key grammar of a LoRA to continue); no model loads. A DiT whose weights are not on this
machine is not looked at: planning without weights must work, and the run itself refuses the
targets once the weights are there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wanflow.errors import ModelLoadError, display_path
from wanflow.memory.sizes import TensorInfo, read_header
from wanflow.steps.input_checks import format_value
from wanflow.steps.longcat_train_checks import continuation_problems, deepspeed_problems
from wanflow.steps.runtime import effective_device
from wanflow.steps.train_animate import animate_mask_problems
from wanflow.steps.train_conditioning import declared_conditioning
from wanflow.steps.train_targets import matches, target_problems

Where = Callable[[str], str]

#: distribution -> the packages it runs on (wanflow drives every engine through accelerate).
ENGINES: Mapping[str, tuple[str, ...]] = {
    "ddp": ("accelerate",),
    "fsdp": ("accelerate",),
    "deepspeed-zero2": ("accelerate", "deepspeed"),
    "deepspeed-zero3": ("accelerate", "deepspeed"),
}
#: optimizer -> the package that provides it.
OPTIMIZERS: Mapping[str, str] = {"adamw8bit": "bitsandbytes", "prodigy": "prodigyopt"}
#: What LoRA training runs on.
LORA_PACKAGE = "peft"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    return importlib.util.find_spec(module) is not None


def train_problems(resolved: Any, where: Where) -> list[str]:
    """Every problem of the training stage that needs a file or a package, all at once."""
    t = resolved.recipe.train
    return [*_package_problems(t, where), *_engine_problems(resolved, where), *_dialect_problems(t, where),

            *_lora_file_problems(t, where), *target_problems(resolved, trained_dits(resolved), where),
            *_dataset_problems(resolved, where), *side_problems(resolved, where)]


def trained_dits(resolved: Any) -> tuple[str, ...]:
    """The DiT components the stage trains: those ``[train].components`` names (on A14B one
    expert alone, or both), else the family's DiT(s); in the family's order, so that naming both
    experts is the default run whatever order they are listed in."""
    family = resolved.family
    dits = tuple(family.experts) or tuple(c for c in ("dit",) if c in family.components)
    chosen = [c for c in resolved.recipe.train.components if c in dits]
    return tuple(d for d in dits if d in chosen) if chosen else dits


def side_problems(resolved: Any, where: Where) -> list[str]:
    """One A14B expert alone whose side of the boundary holds no timestep of ``timestep_range``:
    it would have nothing to draw. The timesteps are the loop's own table (``train.timesteps``),
    cut by ``timestep_range`` the way the loop cuts it."""
    import numpy as np

    from wanflow.train.timesteps import index_range, training_timesteps

    t = resolved.recipe.train
    dits = trained_dits(resolved)
    first, last = t.timestep_range
    if not resolved.family.experts or len(dits) != 1 or t.task == "direct_distill" or not 0 <= first < last <= 1:
        return []
    boundary = float(resolved.values["sampler.boundary"]) * 1000
    lo, stop = index_range((first, last))
    steps = training_timesteps(t.shift)[lo:stop].astype(np.float64)
    high = dits[0] == "dit_high_noise"
    if bool((steps >= boundary).any() if high else (steps < boundary).any()):
        return []
    side = f"t ≥ {boundary:g}" if high else f"t < {boundary:g}"
    return [f"{where('train.timestep_range')}: [train].timestep_range = {format_value(list(t.timestep_range))}: "
            f"holds no timestep of {dits[0]}'s side of the boundary ({side}, with shift {t.shift:g}), which "
            f"this run trains alone; widen the range across the boundary, or train the other expert"]


def _package_problems(t: Any, where: Where) -> list[str]:
    """The distribution's engine, the optimizer's package and peft, where they are not installed."""
    found = []
    missing = [m for m in ENGINES.get(t.distribution, ()) if not installed(m)]
    if missing:
        found.append(f"{where('train.distribution')}: [train].distribution = {format_value(t.distribution)}: "
                     f"needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed; "
                     f"pip install {' '.join(missing)}, or choose another distribution (\"ddp\" needs only "
                     'accelerate; "none" trains in one process)')
    package = OPTIMIZERS.get(t.optimizer)
    if package and not installed(package):
        found.append(f"{where('train.optimizer')}: [train].optimizer = {format_value(t.optimizer)}: needs "
                     f'{package}, which is not installed; pip install {package}, or use optimizer = "adamw"')
    if t.method == "lora" and not installed(LORA_PACKAGE):
        found.append(f"{where('train.method')}: [train].method = \"lora\": LoRA training runs on "
                     f'{LORA_PACKAGE}, which is not installed; pip install {LORA_PACKAGE}')
    return found


def _engine_problems(resolved: Any, where: Where) -> list[str]:
    """FSDP and DeepSpeed where they cannot run: without CUDA (``_cuda_problems``), and over A14B's
    two DiTs: a DeepSpeed engine wraps one model, and accelerate's FSDP2 prepares one model per
    run (``Accelerator.prepare`` raises "Only one model is supported when using FSDP2")."""
    t = resolved.recipe.train
    if t.distribution in ("none", "ddp"):
        return []
    found = _cuda_problems(resolved, where)
    if len(trained_dits(resolved)) > 1:
        engine = ("DeepSpeed wraps one model" if t.distribution.startswith("deepspeed")
                  else "accelerate's FSDP2 shards one model per run")
        found.append(f"{where('train.distribution')}: [train].distribution = {format_value(t.distribution)}: "
                     f"{engine} and {resolved.family.name} trains two experts in one run; use \"ddp\", or train "
                     'one expert per run (components = ["dit_high_noise"], then ["dit_low_noise"])')
    return found + deepspeed_problems(resolved, where)


def _cuda_problems(resolved: Any, where: Where) -> list[str]:
    """FSDP or DeepSpeed without CUDA: accelerate would quietly run DDP instead."""
    t = resolved.recipe.train
    if effective_device(resolved.values["runtime.device"]) == "cuda":
        return []
    return [f"{where('train.distribution')}: [train].distribution = {format_value(t.distribution)}: "
            "FSDP and DeepSpeed run only on CUDA GPUs (on the CPU accelerate would fall back to DDP); "
            'use "ddp" here, or train on a machine with GPUs']


def _dialect_problems(t: Any, where: Where) -> list[str]:
    """An export dialect that the LoRA writer cannot write (its table imports torch: asked lazily)."""
    if t.method != "lora":
        return []
    from wanflow.lora.dialects import WRITABLE

    if t.export_dialect in WRITABLE:
        return []
    return [f"{where('train.export_dialect')}: [train].export_dialect = {format_value(t.export_dialect)}: "
            f"wanflow writes LoRAs as {', '.join(WRITABLE)}; use one of them"]


def _lora_file_problems(t: Any, where: Where) -> list[str]:
    """The LoRA files to start from are safetensors files; a LoRA to continue fits the adapter."""
    found = []
    for key in ("lora_init", "preset_lora"):
        path = getattr(t, key)
        if not path or not Path(path).is_file():
            continue  # unset, or already refused by validation
        try:
            header = read_header(path)
        except (ModelLoadError, OSError):
            found.append(f"{where('train.' + key)}: [train].{key} = {format_value(display_path(path))}: is not a "
                         "safetensors file (its header cannot be read); name a LoRA .safetensors file")
            continue
        if key == "lora_init" and t.method == "lora":
            found += _init_problems(path, header, t, where)
    return found


def _init_problems(path: str, header: Mapping[str, TensorInfo], t: Any, where: Where) -> list[str]:
    """A LoRA to continue: low-rank pairs of ``lora_rank``, on modules that ``lora_targets`` trains."""
    # The LoRA key grammar imports torch: asked only when there is a LoRA to continue.
    from wanflow.lora.dialects import ParsedKey, parse_key

    label = f"{where('train.lora_init')}: [train].lora_init = {format_value(display_path(path))}"
    downs = {p.module: header[p.key] for p in map(parse_key, header)
             if isinstance(p, ParsedKey) and p.role == "down"}
    ranks = sorted({info.shape[0] for info in downs.values() if info.shape})
    if not ranks:
        return [f"{label}: holds no low-rank LoRA pairs (lora_A/lora_down keys) to continue; name a LoRA "
                "file, or remove lora_init to start a fresh one"]
    found = []
    if len(ranks) > 1:
        found.append(f"{label}: holds LoRAs of several ranks ({', '.join(map(str, ranks))}); continue from a "
                     "LoRA of one rank")
    elif ranks != [t.lora_rank]:
        found.append(f"{label}: was trained at rank {ranks[0]}, but [train].lora_rank = {t.lora_rank}; set "
                     f"lora_rank = {ranks[0]}")
    untrained = sorted(m for m in downs if not any(matches(m, target) for target in t.lora_targets))
    if untrained:
        found.append(f"{label}: patches {len(untrained)} module{'s' * (len(untrained) != 1)} that "
                     f"[train].lora_targets does not train (e.g. {untrained[0]}); add "
                     f"\"{untrained[0].rsplit('.', 1)[-1]}\" to lora_targets, or continue another LoRA")
    return found


def _dataset_problems(resolved: Any, where: Where) -> list[str]:
    """The dataset, loaded and checked whole; then the settings that depend on its size."""
    from wanflow.steps.train_data import training_dataset
    from wanflow.train import DatasetError

    label = f"{where('train.dataset')}: [train].dataset"
    try:
        dataset = training_dataset(resolved)
    except DatasetError as exc:
        return [f"{label}: {p}" for p in exc.problems]
    t, samples = resolved.recipe.train, dataset.samples
    found = video_only_problems(dataset, resolved.family, label) + pose_file_problems(dataset, label)
    found += animate_mask_problems(dataset, resolved.family, label)
    found += continuation_problems(dataset, resolved, label)
    if t.batch_size > 1 and declared_conditioning(resolved.family):
        found += mixed_conditioning_problems(dataset, t.batch_size, where)
    if t.validation_samples >= len(samples):
        found.append(f"{where('train.validation_samples')}: [train].validation_samples = {t.validation_samples}: "
                     f"the dataset has {len(samples)} sample{'s' * (len(samples) != 1)}, so none would be left "
                     f"to train on; use at most {len(samples) - 1}")
    elif t.batch_size > (len(samples) - t.validation_samples) * t.repeat:
        left = (len(samples) - t.validation_samples) * t.repeat
        found.append(f"{where('train.batch_size')}: [train].batch_size = {t.batch_size}: an epoch holds only "
                     f"{left} training sample{'s' * (left != 1)}; use a batch of at most {left}, or add samples")
    return found


def pose_file_problems(dataset: Any, label: str) -> list[str]:
    """Camera pose files that are not CameraCtrl's format, or hold fewer poses than the sample's frames."""
    from wanflow.steps.camera_poses import PoseFileError, read_pose_file

    found = []
    for s in dataset.samples:
        ref = s.input("camera_pose_file")
        if ref is None:
            continue
        try:
            read_pose_file(Path(ref.path), s.target.frames)
        except PoseFileError as exc:
            found.append(f"{label}: {display_path(dataset.source)} row {s.row}: camera_pose_file = "
                         f"{display_path(ref.path)!r}: {exc} (CameraCtrl's format: a header line, then per frame: "
                         "frame fx fy cx cy 0 0 and the 3x4 world-to-camera matrix by rows)")
    return found


def mixed_conditioning_problems(dataset: Any, batch_size: int, where: Where) -> list[str]:
    """Samples of one bucket whose conditioning differs in shape (VACE reference images, a present
    or absent input of a kind that then adds nothing): they cannot share a batch."""
    shapes: dict[str, set[frozenset[str]]] = {}
    for s in dataset.samples:
        shapes.setdefault(s.bucket, set()).add(frozenset(c for c, _ in s.inputs))
    mixed = sorted(b for b, seen in shapes.items() if len(seen) > 1)
    if not mixed:
        return []
    seen = shapes[mixed[0]]
    differ = sorted(frozenset.union(*seen) - frozenset.intersection(*seen))
    them = "it" if len(differ) == 1 else "them"
    return [(f"{where('train.batch_size')}: [train].batch_size = {batch_size}: in bucket{'s' * (len(mixed) > 1)} "
             f"{', '.join(mixed[:3])} some rows give {', '.join(differ)} and others leave {them} empty, so their "
             "conditioning differs and they cannot share a batch; give every row the same input columns, or use "
             "batch_size = 1")]


def video_only_problems(dataset: Any, family: Any, label: str) -> list[str]:
    """Image rows for a family that requires a source video (video-to-video): it trains on clips only."""
    images = [s.row for s in dataset.samples if s.kind == "image"]
    if not images or "video" not in family.required_inputs:
        return []
    return [f"{label}: {_rows(images)} {'is an image' if len(images) == 1 else 'are images'}, but {family.name} "
            "turns a source video into another and trains on videos only; use video clips (or train a family "
            "that takes images)"]


def _rows(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:5])) + (", …" if len(numbers) > 5 else "")
    return f"row{'s' * (len(numbers) != 1)} {shown}"

