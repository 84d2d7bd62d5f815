"""The memory plan of one job, before anything loads: budgets, sizes, activations → placements.

The inputs come from the recipe (`[memory]` budgets and policy, `[models.X].device`), the
checkpoint headers (each component's bytes, the DiT's per block) and the activation estimates of
``wanflow.memory.estimates`` at the recipe's size. ``wanflow.memory.planner`` decides; a plan that
cannot fit is refused here, with the numbers and the cheapest change, before any weight is read.
Placement never changes the numbers, so none of this is in a step key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wanflow.memory.estimates import (
    dit_forward_bytes,
    latent_grid,
    text_encode_bytes,
    vae_decode_bytes,
)
from wanflow.memory.planner import Budgets, MemoryPlan, StepDemand, plan
from wanflow.memory.sizes import ComponentSize, component_size, dit_shapes, read_headers
from wanflow.models.dit_config import DitConfig, from_shapes, keeps_fp32
from wanflow.steps.denoise import expert_cfgs

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
            size = component_size(name, read_headers(tensors), itemsize, keeps_fp32=keeps_fp32,
                                  blocks=name in DIT_ROLES)
            out.append(size.as_fp8() if fp8 and name in DIT_ROLES else size)
        else:
            out.append(ComponentSize(name, sum(Path(p).stat().st_size for p in paths)))
    return out


def step_demands(job: Any, dit_config: DitConfig, itemsize: int, vae_version: str) -> list[StepDemand]:
    """The steps that load models, with their activation estimates at the recipe's size."""
    v = job.values
    frames, height, width = v["video.frames"], v["video.height"], v["video.width"]
    grid = latent_grid(frames, height, width, vae_version)
    dits = tuple(d for d in DIT_ROLES if d in job.weights)
    guided = any(cfg != 1.0 for cfg in expert_cfgs(v, dits).values())
    tile = tuple(v["vae.tile_size"]) if v["vae.tiled"] else None
    stride = 8 if vae_version == "wan2.1" else 16
    pixels_tile = (min(tile[0] * stride, height), min(tile[1] * stride, width)) if tile else None
    demands = [StepDemand("encode-text", ("text_encoder",),
                          int(text_encode_bytes(itemsize=itemsize) * _text_encoder_fraction(job)))]
    if "image_encoder" in job.weights:
        demands.append(StepDemand("encode-image", ("image_encoder",), 0))
    demands.append(StepDemand("denoise", dits, dit_forward_bytes(
        dit_config, grid, itemsize, prepared_contexts=2 if guided else 1,
        per_token_time=dit_config.model_type == "ti2v")))
    demands.append(StepDemand("decode", ("vae",), vae_decode_bytes(
        vae_version, 96, frames, height, width, itemsize, tile=pixels_tile)))
    return demands


#: Bytes of the released umT5-XXL encoder in bf16, the size the text-encode estimate is made for.
UMT5_XXL_BYTES = 11.4e9


def _text_encoder_fraction(job: Any) -> float:
    """The text encoder's size relative to umT5-XXL (≤ 1): the estimate's activations are umT5-XXL's
    and scale with its width, so a smaller encoder (a test or quickstart one) needs less."""
    files = [w.path for w in job.weights["text_encoder"].values()]
    return min(1.0, sum(Path(f).stat().st_size for f in files) / UMT5_XXL_BYTES)


def memory_plan(job: Any, device: str, dtype_name: str, vae_version: str) -> MemoryPlan:
    """The job's plan (``wanflow.memory.planner.plan``), or MemoryPlanError with the numbers."""
    v = job.values
    itemsize = ITEMSIZE.get(dtype_name, 4)
    files = {name: [w.path for w in weights.values()] for name, weights in job.weights.items()
             if name != "lora"}
    dit = next(d for d in DIT_ROLES if d in files)
    config = from_shapes(dit_shapes(files[dit]), str(files[dit][0]))
    budgets = Budgets(device_budget(v, device), host_budget(v, device))
    on_host = frozenset(name for name in files if job.device(name) == "cpu") if device != "cpu" else frozenset()
    return plan(budgets, v["memory.policy"], component_sizes(files, itemsize, bool(v["memory.fp8"])),
                step_demands(job, config, itemsize, vae_version), host_compute=on_host)
