"""The dataset of a LongCat-Video training run: clips long enough for their continuation frames.

A row with a ``longcat_video`` column continues that video from its last
``[inputs].longcat_cond_frames`` frames, which are the first frames of the row's clip (the clip
includes them, as a generation's does). A clip with no frame after them would leave nothing to
learn: refused before anything loads, naming the row and the fix; so is a
``longcat_cond_frames`` set for a dataset without that column, which no sample would read.
"""

from __future__ import annotations

from typing import Any

from wanflow.families.longcat import PIPELINE
from wanflow.errors import display_path

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
