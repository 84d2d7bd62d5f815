"""The one DiT of a single-DiT step (weights ``dit.0`` …) from the model pool, for the steps that
run their own loop around it (the clip loops of S2V and Animate, LongCat's and the block-causal
samplers): the component's device and dtype, the step's LoRAs, storage, streaming tiers and
attention plugin, in one place, so a new loader argument reaches every such step at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wanflow.memory import pool as model_pool
from wanflow.steps.component import component_runtime


def step_dit(ctx: Any, files: int, dtype: str, residency: Any, *, loras: Sequence[tuple[str, Any, float]] = (),
             storage: str = "compute", tiers: Sequence[str] = (), compile_mode: str = "none",
             attention: Any = None) -> Any:
    """The DiT the step's ``files`` weights name; ``loras`` are the step's (weight name, role, scale)
    entries, applied in order; ``attention`` a plugin whose kernel replaces wanflow's own."""
    device, run_dtype = component_runtime(ctx.params, dtype)
    applied = tuple((ctx.weight(lora), scale) for lora, _, scale in loras)
    return model_pool.dit([ctx.weight(f"dit.{i}") for i in range(files)], run_dtype, device,
                          ctx.params["runtime.attention"], residency, applied, storage, tiers,
                          compile_mode=compile_mode, kernel=None if attention is None else attention.load())
