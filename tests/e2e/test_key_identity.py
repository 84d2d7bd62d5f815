"""No two nodes of a real plan share a key unless they are the same computation.

Every registered family is planned by its real pipeline over tiny weights in the official
layouts, with every input combination it accepts (images, end image, a source video or image
kept with ``denoising_strength < 1``, guidance on and off). A node's static key is its
fingerprint with each input replaced by the static key of the node that feeds it: two nodes of one
plan with equal static keys would be served one cached output. A family added later is covered
without editing this file (the layout writer must know its repository, or the test says so).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.e2e._layout import REPOS
from tests.e2e.conftest import write_recipe
from wanflow.engine.keys import digest_file, key_of
from wanflow.engine.plan import Plan, plan
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe


def static_keys(the_plan: Plan) -> dict[str, str]:
    """node -> key, with inputs keyed by their producers' keys (a Merkle key over the DAG)."""
    keys: dict[str, str] = {}
    for ps in the_plan.steps:
        inputs = {role: keys[src] for role, src in ps.spec.inputs.items()}
        keys[ps.name] = key_of(ps.fingerprint(inputs, the_plan.env))
    return keys


def planned(recipe: Path, *sets: str) -> Plan:
    resolved = load_recipe(recipe, sets=sets)
    specs = get_registry().pipeline(resolved.model).steps(resolved)
    return plan(resolved.values, specs, resolved.name, digest_file, env={"torch": "test"})


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Two images and a short video, of another size than the recipes' (resized on encode)."""
    from PIL import Image

    from wanflow.output import save_mp4

    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(7)
    out = {}
    for name in ("image", "end_image"):
        out[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(out[name])
    out["video"] = folder / "video.mp4"
    save_mp4(rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8), out["video"], 8, {})
    return out


def input_sets(family) -> list[dict[str, str]]:
    """Every combination of the media inputs the family accepts that satisfies what it requires."""
    offered = [n for n in ("image", "end_image", "video")
               if n in family.accepted_inputs or n in family.required_inputs]
    combos = []
    for r in range(len(offered) + 1):
        for names in itertools.combinations(offered, r):
            chosen = set(names)
            if not set(family.required_inputs) & {"image", "end_image", "video"} <= chosen:
                continue
            if "end_image" in chosen and "image" not in chosen:
                continue
            combos.append(sorted(chosen))
    return combos


def families() -> list[str]:
    """The base families and the tiny one; the derivative families (VACE, Wan-Fun, speed control), whose
    inputs are control videos, cameras and buckets, are checked in their own e2e files."""
    registry = get_registry()
    return [name for name in registry.family_names()
            if registry.family(name).pipeline == "wan" and (name in REPOS or name.startswith("wanflow-"))]


@pytest.mark.parametrize("family_name", families())
def test_no_two_nodes_of_any_plan_share_a_key(family_name, env, media, tmp_path):
    family = get_registry().family(family_name)
    if family_name not in REPOS and not family_name.startswith("wanflow-"):
        pytest.fail(f"{family_name}: add its repository layout to tests/e2e/_layout.REPOS")
    variants = []
    for names in input_sets(family):
        strengths = (1.0, 0.5) if {"image", "video"} & set(names) else (1.0,)
        for strength, cfg in itertools.product(strengths, (5.0, 1.0)):
            recipe = write_recipe(tmp_path, family_name, {n: media[n] for n in names},
                                  sampler={"denoising_strength": strength, "cfg": cfg})
            the_plan = planned(recipe)
            keys = static_keys(the_plan)
            shared = [names_ for names_ in _groups(keys) if len(names_) > 1]
            assert not shared, f"{family_name} {names} strength {strength} cfg {cfg}: {shared} share a key"
            variants.append((names, strength, cfg, keys))
    assert variants, f"{family_name}: no input combination planned"


def _groups(keys: dict[str, str]) -> list[list[str]]:
    by_key: dict[str, list[str]] = {}
    for node, key in keys.items():
        by_key.setdefault(key, []).append(node)
    return list(by_key.values())


@pytest.mark.parametrize("family_name", ["wan2.1-i2v-14b-480p", "wan2.2-ti2v-5b", "wan2.2-i2v-a14b",
                                         "wan2.1-flf2v-14b-720p"])
def test_image_families_keep_the_source_and_the_conditioning_apart(family_name, env, media, tmp_path):
    """With an input image and strength < 1, the image conditioning and the kept source are two
    computations over the same file and weights: their keys differ, and so do the denoise keys of
    two strengths."""
    inputs = {"image": media["image"]}
    if family_name.startswith("wan2.1-flf2v"):
        inputs["end_image"] = media["end_image"]
    recipe = write_recipe(tmp_path, family_name, inputs, sampler={"denoising_strength": 0.5})
    half = static_keys(planned(recipe))
    assert half["encode-conditioning:image"] != half["encode-conditioning:source"]
    most = static_keys(planned(recipe, "sampler.denoising_strength=0.9"))
    assert half["encode-conditioning:source"] == most["encode-conditioning:source"]
    assert half["denoise"] != most["denoise"]


def test_i2v_strength_changes_the_video(env, media, tmp_path):
    """The defect this file guards against, end to end: with the conditioning and the source
    sharing a key, strengths 0.5 and 0.9 gave the same video (denoise started from pure noise)."""
    from tests.e2e._run import run

    recipe = write_recipe(tmp_path, "wan2.1-i2v-14b-480p", {"image": media["image"]},
                          sampler={"denoising_strength": 0.5})
    half = run(recipe, env)
    most = run(recipe, env, "sampler.denoising_strength=0.9")
    assert half.results["encode-conditioning:source"].digest != half.results["encode-conditioning:image"].digest
    assert half.results["decode"].digest != most.results["decode"].digest
