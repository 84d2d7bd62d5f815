"""Several VACE reference images from one recipe: each a leading latent frame in the order given,
dropped after sampling; each checked, keyed by content and archived."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tomlkit

from tests.e2e._layout_vace import write_vace_root
from tests.e2e._run import run, video_shape
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_key_identity import planned, static_keys
from wanflow.cli import main
from wanflow.errors import RecipeError, display_path
from wanflow.recipe import load_recipe

FAMILY = "wan2.1-vace-1.3b"
SIZE, FRAMES = 16, 5
VACE = "encode-conditioning:vace"


@pytest.fixture(scope="module")
def vace_root(tmp_path_factory):
    return write_vace_root(tmp_path_factory.mktemp("vace-models"))


@pytest.fixture()
def env(vace_root, tmp_path, monkeypatch):
    return use_models(vace_root, tmp_path, monkeypatch)


@pytest.fixture()
def folder(tmp_path) -> Path:
    """A recipe folder with refs/a.png, refs/b.png (other sizes than the clip) and refs/alpha.png
    (a transparent corner)."""
    from PIL import Image

    where = tmp_path / "project"
    (where / "refs").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name, shape in (("a", (24, 12, 3)), ("b", (12, 20, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(where / "refs" / f"{name}.png")
    rgba = np.full((16, 16, 4), 255, np.uint8)
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba, "RGBA").save(where / "refs" / "alpha.png")
    return where


def recipe(folder: Path, reference, name: str = "refs") -> Path:
    """The small VACE recipe at 16×16, 5 frames, with ``[inputs.vace].reference`` as written
    (paths relative to the recipe's folder)."""
    folder.mkdir(exist_ok=True)
    path = write_recipe(folder, FAMILY, video={"width": SIZE, "height": SIZE, "frames": FRAMES})
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    doc["name"] = name
    doc["inputs"] = {"vace": {"reference": reference}}
    target = path.with_name(f"{name}.toml")
    path.unlink()
    target.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return target


def stored(outcome, node: str) -> dict:
    """A finished node's tensors, read back from the cache."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.store import bytes_to_tensors

    with Cache() as cache:
        return bytes_to_tensors(cache.store.get(outcome.results[node].digest))


def test_two_references_are_two_leading_frames_dropped_after_sampling(env, folder):
    one = run(recipe(folder, "refs/a.png", "one"), env)
    two = run(recipe(folder, ["refs/a.png", "refs/b.png"], "two"), env)
    assert video_shape(two.archive / "outputs" / "video.mp4") == (FRAMES, SIZE, SIZE)
    context = stored(two, VACE)
    assert int(context["references"][0]) == 2
    latent_frames = (FRAMES - 1) // 4 + 1
    assert context["context"].shape[2] == 2 + latent_frames  # both references lead the clip
    assert stored(one, VACE)["context"].shape[2] == 1 + latent_frames
    first, both = stored(one, "denoise")["latents"], stored(two, "denoise")["latents"]
    assert both.shape == first.shape  # the leading frames are gone
    assert (both - first).abs().max() > 1e-3  # the second reference steers the clip
    assert {two.results[n].hit for n in ("encode-text:positive", "encode-text:negative")} == {True}


def test_the_order_of_the_references_is_part_of_the_vace_key(env, folder):
    ab = static_keys(planned(recipe(folder, ["refs/a.png", "refs/b.png"], "ab")))
    ba = static_keys(planned(recipe(folder, ["refs/b.png", "refs/a.png"], "ba")))
    assert ab[VACE] != ba[VACE]
    assert ab["denoise"] != ba["denoise"]
    assert ab["encode-text:positive"] == ba["encode-text:positive"]


def test_a_path_and_an_array_of_that_one_path_are_one_recipe(env, folder):
    alone = load_recipe(recipe(folder / "alone", "../refs/a.png", "same"))  # same name: one recipe
    listed = load_recipe(recipe(folder / "listed", ["../refs/a.png"], "same"))
    assert static_keys(planned(alone.path)) == static_keys(planned(listed.path))
    assert alone.canonical_toml() == listed.canonical_toml()
    assert list(alone.input_files()) == ["inputs.vace.reference"]
    two = static_keys(planned(recipe(folder, ["refs/a.png", "refs/a.png"], "twice")))
    assert two[VACE] != static_keys(planned(alone.path))[VACE]  # the same image twice: two frames


def test_each_reference_resolves_against_the_recipe_folder(env, folder):
    resolved = load_recipe(recipe(folder, ["refs/a.png", "refs/b.png"]))
    assert resolved.values["inputs.vace.reference"] == [str(folder / "refs" / "a.png"),
                                                         str(folder / "refs" / "b.png")]
    assert resolved.input_files() == {"inputs.vace.reference.0": folder / "refs" / "a.png",
                                      "inputs.vace.reference.1": folder / "refs" / "b.png"}


def test_a_missing_second_reference_is_refused_naming_it(env, folder):
    path = recipe(folder, ["refs/a.png", "refs/missing.png"])
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    (problem,) = caught.value.problems
    assert problem.startswith(f'{display_path(path)}: [inputs.vace].reference[1] = "refs/missing.png": no such file')
    assert str(folder / "refs" / "missing.png") in problem


@pytest.mark.parametrize("reference, shown", [
    ([], "[inputs.vace].reference = []: names no image"),
    (["refs/a.png", 3], "[inputs.vace].reference[1] = 3: must be a string, not an integer"),
    (7, "[inputs.vace].reference = 7: must be a string or an array, not an integer; reference image(s)"),
])
def test_a_reference_that_is_not_paths_is_refused(env, folder, reference, shown):
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe(folder, reference))
    assert [shown in p for p in caught.value.problems] == [True]


def test_a_transparent_second_reference_is_refused_at_validation(env, folder, capsys):
    path = recipe(folder, ["refs/a.png", "refs/alpha.png"])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"\[inputs\.vace\]\.reference\[1\] = \"[^\"]*alpha\.png\": the image has an alpha "
                     r"channel with 16 transparent pixels", err)
    assert "reference[0]" not in err


def test_an_archive_of_two_references_carries_both_and_reproduces(env, folder, capsys):
    path = recipe(folder, ["refs/a.png", "refs/b.png"])
    assert main(["run", str(path), "--runs-dir", str(env), "--quiet"]) == 0
    (archive,) = (env / "refs").iterdir()
    resolved = (archive / "resolved.toml").read_text(encoding="utf-8")
    found = re.search(r'(?m)^reference = \["inputs/([0-9a-f]{64})\.png", "inputs/([0-9a-f]{64})\.png"\]$',
                      resolved)
    assert found and found.group(1) != found.group(2)
    assert sorted(p.name for p in (archive / "inputs").iterdir()) == sorted(f"{h}.png" for h in found.groups())
    shutil.rmtree(folder / "refs")  # the archive must not need the originals
    capsys.readouterr()
    assert main(["reproduce", str(archive), "--runs-dir", str(env)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "video.mp4: bit-identical" in out
