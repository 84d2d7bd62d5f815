"""The models a training run trains, built the same way in one process or in each of several."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from wanflow.train.adapters import inject_lora, merge_preset, start_from, unfreeze
from wanflow.train.loop import Expert


def _motion_controller(dit: torch.nn.Module, file: Path, device: str) -> torch.nn.Module:
    from wanflow.models.motion_controller import ControlledDiT, load_motion_controller

    return ControlledDiT(dit, load_motion_controller(file, dtype=torch.float32, device=device))


#: Component trained alone -> (frozen DiT, the component's file, device) -> the module that trains.
PART_WRAPPERS: Mapping[str, Callable[[torch.nn.Module, Path, str], torch.nn.Module]] = {
    "motion_controller": _motion_controller,
}


def build_expert(role: str, files: Sequence[Path], params: Mapping[str, Any], init: Mapping[str, Path],
                 device: str, compute: torch.dtype, boundary: float, load: Callable[..., Any] | None = None,
                 parts: Mapping[str, Path] | None = None,
                 place: Callable[[torch.nn.Module], Any] | None = None) -> Expert:
    """One DiT ready to train: loaded, preset LoRA merged, adapter injected (or unfrozen).

    LoRA: the frozen base computes in the run's dtype and the adapter keeps fp32 (peft upcasts
    it). Full fine-tuning: fp32 weights, computed in fp32 (a bf16 autocast path is not built).
    ``init`` maps "lora_init" / "preset_lora" to their files when the recipe names them;
    ``boundary`` (A14B) is the t where the high-noise expert hands over, 0 for one DiT.
    ``load`` (``load_dit``'s signature) loads a DiT of another architecture (a variant's loader).
    ``parts`` maps a component trained alone (``FamilySpec.trainable_parts``) to its file: the DiT
    stays frozen (fp32, as full fine-tuning computes), wrapped with the part, which alone trains;
    the expert is then named after the part.
    ``place`` (a LoRA over a frozen base whose blocks stream, ``wanflow.memory.train_placement``:
    ``load`` then loads the base for its tiers): the factors are made on ``device`` whatever
    their base weight's place, and ``place(model)`` puts the frozen blocks in their tiers once the
    adapter exists (the factors stay resident).
    """
    from wanflow.models.dit_loader import load_dit

    lora = params["train.method"] == "lora"
    if place is not None and (not lora or parts):
        raise ValueError("streamed frozen blocks are built for a LoRA only; the recipe's rules refuse the rest")
    fp8 = lora and bool(params.get("memory.fp8"))  # the frozen base stored in fp8 (never a bf16 copy)
    model = (load or load_dit)(list(files), dtype=compute if lora else torch.float32, device=device,
                               attention_kernel=params["runtime.attention"], storage="fp8" if fp8 else "compute")
    model.requires_grad_(False)
    if "preset_lora" in init:
        merge_preset(model, init["preset_lora"], float(params["train.preset_lora_scale"]))
    if lora:
        inject_lora(model, tuple(params["train.lora_targets"]), int(params["train.lora_rank"]),
                    float(params["train.lora_alpha"]), int(params["train.seed"]),
                    device=device if place is not None else None)
        if "lora_init" in init:
            start_from(model, init["lora_init"])
    if place is not None:
        place(model)
    model.gradient_checkpointing = bool(params["train.gradient_checkpointing"])
    if parts:
        (role, file), = parts.items()
        model = PART_WRAPPERS[role](model, file, device)
    if not lora:
        unfreeze(model)
    model.train()
    if not boundary:
        return Expert(role, model)
    if role == "dit_high_noise":
        return Expert(role, model, t_min=boundary)
    return Expert(role, model, t_max=boundary)
