"""The training dataset of a resolved recipe: its sizing from ``[train]`` and the family, loaded
and checked whole (every bad row at once) before any model loads. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wanflow.train import Dataset, Sizing, load_dataset


def sizing_of(resolved: Any) -> Sizing:
    """``[train]``'s sizes with the family's spatial factor (16 or 32, never a constant)."""
    t = resolved.recipe.train
    fixed = {"width": t.width, "height": t.height} if (t.width or t.height) else {}
    return Sizing.for_family(resolved.family, **fixed, max_pixels=t.max_pixels,
                             aspect_ratios=tuple(t.aspect_ratios), max_frames=t.frames,
                             frame_buckets=tuple(t.frame_buckets))


def training_dataset(resolved: Any) -> Dataset:
    """The checked dataset (raises ``DatasetError`` listing every problem with its row)."""
    t = resolved.recipe.train
    family = resolved.family
    return load_dataset(Path(t.dataset), sizing=sizing_of(resolved), accepted_inputs=family.accepted_inputs,
                        required_inputs=family.required_inputs, family=family.name,
                        base_path=Path(t.base_path) if t.base_path else None, repeat=t.repeat)
