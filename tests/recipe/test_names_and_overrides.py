"""DiffSynth names get the wanflow key that means the same; run names stay inside runs/; a --set
of a key that [sweep] sweeps is refused instead of being silently replaced by the sweep."""

from __future__ import annotations

import attrs
import pytest

from wanflow.errors import RecipeError
from wanflow.recipe import load_recipe
from wanflow.recipe.aliases import DIFFSYNTH_NAMES, key_label
from wanflow.recipe.reasons import schema_keys, why
from wanflow.recipe.schema import Recipe
from tests.recipe.helpers import FAMILIES, write

BASIC = 'model = "toy-t2v"\n[prompt]\ntext = "a cat"\n'


def test_every_diffsynth_name_points_at_a_real_key():
    assert len(DIFFSYNTH_NAMES) == 49
    assert {target for target, _ in DIFFSYNTH_NAMES.values()} <= set(schema_keys())
    for name in ("cfg_scale", "num_inference_steps", "switch_DiT_boundary", "sigma_shift", "tiled",
                 "tile_size", "tile_stride", "height", "width", "num_frames", "prompt", "negative_prompt",
                 "input_image", "end_image", "input_video", "denoising_strength", "rand_device", "seed",
                 "tea_cache_l1_thresh"):
        assert name in DIFFSYNTH_NAMES, name


TOP_LEVEL = {f.name for f in attrs.fields(Recipe)}  # `prompt` is a table here, not an unknown key


@pytest.mark.parametrize("name", sorted(set(DIFFSYNTH_NAMES) - TOP_LEVEL))
def test_a_diffsynth_name_at_the_top_level_gets_its_wanflow_key(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "r.toml", f"{name} = 1\n" + BASIC)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, families=FAMILIES)
    target = key_label(DIFFSYNTH_NAMES[name][0])
    assert err.value.problems == [f"r.toml: {name}: unknown key; did you mean {target}?"
                                  + err.value.problems[0].partition("?")[2]]
    assert err.value.problems[0].endswith(")")  # the reason: DiffSynth's name, or the right table


def test_diffsynth_names_in_a_wrong_table_and_in_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "r.toml", BASIC + "[vae]\nnum_frames = 81\n[sampler]\nrand_device = \"cpu\"\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, families=FAMILIES, sets=["tea_cache_l1_thresh=0.2"])
    problems = err.value.problems
    assert "r.toml: [vae].num_frames: unknown key; did you mean [video].frames? (DiffSynth's num_frames)" in problems
    assert ("r.toml: [sampler].rand_device: unknown key; did you mean [sampler].noise_device? "
            "(DiffSynth's rand_device)") in problems
    assert ("--set tea_cache_l1_thresh=0.2: tea_cache_l1_thresh: unknown key; did you mean "
            "[sampler.cache].threshold? (DiffSynth's tea_cache_l1_thresh") in " ".join(problems)


def test_a_typo_still_gets_the_closest_key_of_its_table(tmp_path):
    with pytest.raises(RecipeError, match=r'\[sampler\]\.shfit: unknown key; did you mean "shift"\?'):
        load_recipe(write(tmp_path, "r.toml", BASIC + "[sampler]\nshfit = 3.0\n"), families=FAMILIES)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\\\b", ".x", "..", "x:y", " x"])
def test_a_name_that_is_not_one_plain_folder_is_refused(tmp_path, name):
    with pytest.raises(RecipeError, match="must be a plain folder name"):
        load_recipe(write(tmp_path, "r.toml", f'name = "{name}"\n' + BASIC), families=FAMILIES)


def test_plain_names_pass(tmp_path):
    for name in ("my run", "cats-v2.1", "猫"):
        assert load_recipe(write(tmp_path, "r.toml", f'name = "{name}"\n' + BASIC), families=FAMILIES).name == name


def test_a_set_of_a_swept_key_is_refused_naming_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "r.toml", BASIC + '[sweep]\n"sampler.seed" = [0, 1]\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path, families=FAMILIES, sets=["sampler.seed=3", "sampler.cfg=4"])
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith('--set sampler.seed=3: [sweep]."sampler.seed" in r.toml also sets this key')
    assert "remove one of them" in err.value.problems[0]
    ok = load_recipe(path, families=FAMILIES, sets=["sampler.cfg=4"])  # an unswept key is fine
    assert [j.values["sampler.cfg"] for j in ok.sweep_jobs()] == [4.0, 4.0]
    assert ok.sweep == {"sampler.seed": (0, 1)}


def test_every_setting_has_a_documented_reason():
    assert len(schema_keys()) > 60
    assert [k for k in schema_keys() if not why(k)] == []
    assert why("sampler.cfg").startswith("official guidance scale")
    assert why("models.dit.dtype") == "compute dtype of this component"
