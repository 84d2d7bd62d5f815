"""What a LongCat-Video training run needs of its dataset and of its distribution.

DeepSpeed: its bf16 and fp16 modes cast every parameter of the model to that dtype when the engine
is prepared (``module.bfloat16()``), LongCat's fp32 layers included (its timestep embedding, its
modulations and final projection, ``longcat_config.keeps_fp32``); those layers cast their weights
back to their fp32 inputs' dtype (``precision.linear``), so the model still trains. DeepSpeed holds
the model in one dtype, so a frozen base stored in fp8 (``[memory].fp8``) is not kept: refused
naming the keys and the fix; FSDP keeps every parameter's dtype (its all-gathers carry mixed dtypes
as bytes) and takes it.

A row with a ``longcat_video`` column continues that video from its last
``[inputs].longcat_cond_frames`` frames, which are the first frames of the row's clip (the clip
includes them, as a generation's does). A clip with no frame after them would leave nothing to
learn: refused before anything loads, naming the row and the fix; so is a
``longcat_cond_frames`` set for a dataset without that column, which no sample would read.
"""

from __future__ import annotations

from typing import Any

from wanflow.errors import display_path
from wanflow.families.longcat import PIPELINE

#: The dataset column of the video a sample continues.
COLUMN = "longcat_video"


def continuation_problems(dataset: Any, resolved: Any, label: str) -> list[str]:
    """Rows whose clip has no frame after the continuation frames; conditioning frames set for
    a dataset that continues no video."""
    if resolved.family.pipeline != PIPELINE:
        return []
    k = resolved.values["inputs.longcat_cond_frames"]
    if resolved.origins.get("inputs.longcat_cond_frames") not in ("default", "family") and not any(
            s.input(COLUMN) is not None for s in dataset.samples):
        return [f"{label}: no row has a {COLUMN} column, so [inputs].longcat_cond_frames = {k} would not be "
                f"read: add the videos to continue as a {COLUMN} column, or remove it"]
    short = [s for s in dataset.samples if s.input(COLUMN) is not None and s.target.frames <= k]
    return [f"{label}: {display_path(dataset.source)} row {s.row}: its clip is {s.target.frames} frames, "
            f"which leaves none to learn after the {k} conditioning frames of its {COLUMN} "
            "([inputs].longcat_cond_frames; the clip includes them): use clips of at least "
            f"{k + 4} frames ([train].frames), or fewer conditioning frames" for s in short]


def deepspeed_problems(resolved: Any, where: Any) -> list[str]:
    """LongCat under DeepSpeed over a frozen base in fp8 (the module docstring says why)."""
    t, v = resolved.recipe.train, resolved.values
    if resolved.family.pipeline != PIPELINE or not t.distribution.startswith("deepspeed"):
        return []
    label = f"{where('train.distribution')}: [train].distribution = \"{t.distribution}\""
    found = []
    if t.method == "lora" and v["memory.fp8"]:
        found.append(f"{label} with [memory].fp8 = true: DeepSpeed holds the model in one dtype, so the frozen base "
                     'would not stay in fp8; set [memory].fp8 = false, or use distribution = "fsdp" or "ddp"')
    return found
