"""Run a recipe in-process through the same functions as ``wanflow run``; read its video back."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg

from wanflow.engine.cache import Cache
from wanflow.engine.runner import RunOptions, RunOutcome, run_recipe
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe


def run(recipe: Path, runs: Path, *sets: str) -> RunOutcome:
    """One job's outcome (the cache is ``WANFLOW_CACHE``)."""
    resolved = load_recipe(recipe, sets=sets)
    with Cache() as cache:
        return run_recipe(resolved, get_registry().pipeline, cache, RunOptions(runs_dir=runs, quiet=True))[0]


def computed(outcome: RunOutcome) -> set[str]:
    """The nodes that ran (missed the cache)."""
    return {name for name, r in outcome.results.items() if not r.hit}


def video_shape(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) of a video file as ffmpeg decodes it."""
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        width, height = next(reader)["size"]
    finally:
        reader.close()
    return frames, width, height
