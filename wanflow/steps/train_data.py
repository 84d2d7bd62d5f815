"""The training dataset of a resolved recipe: its sizing from ``[train]`` and the family, loaded
and checked whole (every bad row at once) before any model loads. Torch-free.

Checking a dataset opens every file (videos are decoded up to the frames training reads). The
answers are remembered in the cache folder by (file, size, modification time, what was asked),
so validating or re-running an unchanged dataset of thousands of clips decodes nothing again.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from wanflow.steps.train_animate import (
    FRAME_INPUTS,
    REFUSED_COLUMNS,
    TRAIN_ACCEPTED,
    TRAIN_REQUIRED,
    is_animate,
)
from wanflow.steps.train_conditioning import frame_inputs
from wanflow.train import Dataset, Sizing, load_dataset
from wanflow.train.probe import Media, probe_media

#: Bumped when what a probe answers changes, so older answers are never read.
PROBE_MEMO_VERSION = 1


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
    accepted, required, frames = family.accepted_inputs, family.required_inputs, frame_inputs(family)
    refused = {}
    if is_animate(family):  # its reference is DiffSynth's input_image (``train_animate``)
        accepted, required, frames, refused = TRAIN_ACCEPTED, TRAIN_REQUIRED, FRAME_INPUTS, REFUSED_COLUMNS
    return load_dataset(Path(t.dataset), sizing=sizing_of(resolved), accepted_inputs=accepted,
                        required_inputs=required, family=family.name,
                        base_path=Path(t.base_path) if t.base_path else None, repeat=t.repeat,
                        probe=remembered_probe, frame_inputs=frames, refused=refused)


def remembered_probe(path: Path, kind: str, wanted_frames: int) -> tuple[Media | None, str]:
    """``probe_media``, its answer kept in the cache folder under the file's size and mtime."""
    st = path.stat()
    key = f"v{PROBE_MEMO_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}|{wanted_frames}"
    memo = _memo()
    found = memo.get(key) if memo is not None else None
    if found is not None:
        media = Media(*found["media"]) if found["media"] else None
        return media, found["why"]
    media, why = probe_media(path, kind, wanted_frames)
    if memo is not None:
        value = [media.path, media.width, media.height, media.frames] if media else None
        memo.set(key, {"media": value, "why": why})
    return media, why


def _memo() -> Any:
    """The probe memo of the current cache folder (``WANFLOW_CACHE``)."""
    from wanflow.engine.cache import default_root

    return _memo_at(default_root())


@functools.cache
def _memo_at(root: Path) -> Any:
    """The probe memo (diskcache: safe across processes), or None where it cannot be written."""
    import diskcache

    try:
        return diskcache.Cache(str(root / "probes"), size_limit=2**28)
    except OSError:
        return None
