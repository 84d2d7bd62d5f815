"""Write a folder of shape clips as mp4 files with a DiffSynth-style ``metadata.csv`` (video,prompt).

Each clip's randomness comes from its own Generator seeded by (seed, combination index, clip
index), so a clip does not change when others are added or the count per combination grows.
Beside the training table the folder holds ``labels.csv`` (every clip's intended colour, shape
and motion, the evaluation script's input) and ``held_out.json`` (the combinations left out).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np

from .captions import caption
from .render import ClipSpec, render, sample_spec
from .vocabulary import HELD_OUT, Combo, all_combos, training_combos

FPS = 16  # Wan's frame rate
LABEL_COLUMNS = ("video", "prompt", "colour", "shape", "motion")


@attrs.frozen
class Clip:
    """One clip to write: where, with what prompt, from which spec."""

    video: str  # path relative to the dataset folder
    prompt: str
    spec: ClipSpec


def plan_clips(seed: int, per_combo: int, *, held_out: bool = False, frames: int = 17,
               height: int = 64, width: int = 64) -> Iterator[Clip]:
    """The clips of the training split (or, with ``held_out``, of the held-out combinations)."""
    index = {combo: i for i, combo in enumerate(all_combos())}
    combos: list[Combo] = list(HELD_OUT) if held_out else training_combos()
    for combo in combos:
        for k in range(per_combo):
            rng = np.random.default_rng([seed, index[combo], k])
            spec = sample_spec(rng, *combo, frames=frames, height=height, width=width)
            name = f"clips/{'_'.join(combo)}_{k:04d}.mp4"
            yield Clip(name, caption(rng, *combo), spec)


def write_dataset(out: Path, clips: list[Clip], seed: int) -> None:
    """Encode every clip under ``out`` and write the tables; existing files are overwritten."""
    from wanflow.output.video import save_mp4

    out.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        s = clip.spec
        save_mp4(render(s), out / clip.video, FPS,
                 {"prompt": clip.prompt, "colour": s.colour, "shape": s.shape, "motion": s.motion, "seed": seed})
    _write_csv(out / "metadata.csv", ("video", "prompt"), ([c.video, c.prompt] for c in clips))
    _write_csv(out / "labels.csv", LABEL_COLUMNS,
               ([c.video, c.prompt, c.spec.colour, c.spec.shape, c.spec.motion] for c in clips))
    (out / "held_out.json").write_text(json.dumps([list(c) for c in HELD_OUT], indent=2) + "\n", encoding="utf-8")


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
