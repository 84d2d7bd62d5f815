"""A tiny training dataset (coloured squares moving over grey, 32×32) and training recipes."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import tomlkit

from wanflow.output import save_mp4

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230), "yellow": (230, 220, 30)}


def clip(colour: str, direction: int, frames: int = 9, size: int = 32) -> np.ndarray:
    """(frames, size, size, 3) uint8: a 10 px square of ``colour`` sliding right (+1) or left (-1)."""
    out = np.full((frames, size, size, 3), 60, np.uint8)
    for f in range(frames):
        x = 4 + (f * 2 if direction > 0 else (frames - 1 - f) * 2)
        out[f, 11:21, x:x + 10] = COLOURS[colour]
    return out


def write_dataset(folder: Path, rows: list[tuple[str, int]] | None = None) -> Path:
    """Clips and ``metadata.csv`` (DiffSynth's video,prompt columns); returns the metadata path."""
    rows = rows or [("red", 1), ("green", -1), ("blue", 1), ("yellow", -1)]
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    lines = ["video,prompt"]
    for i, (colour, direction) in enumerate(rows):
        name = f"clips/{i}_{colour}.mp4"
        save_mp4(clip(colour, direction), folder / name, 8, {})
        lines.append(f"{name},a {colour} square moving {'right' if direction > 0 else 'left'}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder / "metadata.csv"


def write_metadata(folder: Path, rows: list[dict]) -> Path:
    """``metadata.csv`` of ``rows`` (column → value) in ``folder``: every column any row names, in
    first-seen order, empty where a row lacks it (DiffSynth's layout); returns its path."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    (folder / "metadata.csv").write_text(text.getvalue())
    return folder / "metadata.csv"


def write_train_recipe(folder: Path, model: str, metadata: Path, name: str = "train", **train) -> Path:
    """A training recipe for ``model``: 32×32, 5 frames, LoRA rank 4, a few steps."""
    settings = {"dataset": str(metadata), "width": 32, "height": 32, "frames": 5, "steps": 4,
                "checkpoint_every": 2, "lora_rank": 4, "lora_alpha": 4.0, "learning_rate": 1e-3}
    doc = {"schema": 1, "name": name, "model": model,
           "video": {"width": 32, "height": 32, "frames": 5},
           "prompt": {"negative": "blurry"},
           "sampler": {"steps": 2}, "train": {**settings, **train}}
    path = folder / f"{name}.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path


def stored_tensors(outcome, node: str) -> dict:
    """The tensors a run's step ``node`` stored in the cache (``WANFLOW_CACHE``)."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.store import bytes_to_tensors

    with Cache() as cache:
        return bytes_to_tensors(cache.store.get(outcome.results[node].digest))


def first_loss(outcome) -> float:
    """The first training step's loss, as the run's loss.csv records it."""
    rows = list(csv.DictReader(io.StringIO((outcome.archive / "outputs" / "loss.csv").read_text())))
    return float(rows[0]["loss"])
