"""Every recipe that ships in recipes/ validates and is in canonical form."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanflow.plugins import build_registry
from wanflow.recipe import load_recipe
from wanflow.recipe.canonical import format_file

#: Generation recipes; the training ones (train-*.toml) need a dataset and are validated with one
#: in tests/recipe/test_train_validation.py.
RECIPES = sorted(p for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.toml")
                 if not p.name.startswith("train-"))


def test_every_builtin_family_has_a_recipe():
    # one per family, the few-step LoRA workflow, Krea Realtime's DiffSynth configuration, LongCat's
    # continuation, image-to-video, its distilled run, its 720p refinement, a long and an interactive video
    # and its DiffSynth configuration, Animate's replacement mode
    assert len(RECIPES) == len(build_registry(entry_points=False).family_names()) + 10
    families = {load_recipe(p, families=build_registry(entry_points=False)).model for p in RECIPES}
    assert families == set(build_registry(entry_points=False).family_names())


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_is_valid_and_canonical(path):
    resolved = load_recipe(path, families=build_registry(entry_points=False))
    assert resolved.values["sampler.seed"] == 0  # shipped recipes are reproducible as they stand
    assert format_file(str(path)) == path.read_text(encoding="utf-8")
