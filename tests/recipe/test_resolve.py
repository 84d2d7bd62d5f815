"""Resolution: family values, includes, --set, origins, file paths and sweeps."""

from __future__ import annotations

import pytest

from wanflow.errors import RecipeError
from wanflow.recipe import load_recipe
from tests.recipe.helpers import FAMILIES, write

BASIC = 'model = "toy-t2v"\n[prompt]\ntext = "a cat"\n'


def test_family_values_fill_what_the_recipe_leaves_unset(tmp_path):
    r = load_recipe(write(tmp_path, "r.toml", BASIC + "[sampler]\nsteps = 3\n"), families=FAMILIES)
    assert r.values["sampler.steps"] == 3 and r.origins["sampler.steps"] == "recipe"
    assert r.values["video.width"] == 64 and r.origins["video.width"] == "family"
    assert r.values["prompt.negative"] == "ugly" and r.origins["prompt.negative"] == "family"
    assert r.values["sampler.cfg"] == 5.0 and r.origins["sampler.cfg"] == "default"
    assert r.name == "r"  # the file stem when no name is given


def test_include_merges_tables_and_records_the_base_file(tmp_path):
    write(tmp_path, "base/common.toml", 'model = "toy-t2v"\n[sampler]\nsteps = 11\ncfg = 2.5\n')
    r = load_recipe(write(tmp_path, "r.toml", 'include = "base/common.toml"\n[prompt]\ntext = "x"\n'
                          "[sampler]\ncfg = 4.0\n"), families=FAMILIES)
    assert (r.values["sampler.steps"], r.values["sampler.cfg"]) == (11, 4.0)
    assert r.origins["sampler.steps"].startswith("include:") and r.origins["sampler.steps"].endswith("base/common.toml")
    assert r.origins["sampler.cfg"] == "recipe"


def test_include_cycle_names_the_chain(tmp_path):
    write(tmp_path, "a.toml", 'include = "b.toml"\n' + BASIC)
    write(tmp_path, "b.toml", 'include = "a.toml"\n')
    with pytest.raises(RecipeError, match=r"include cycle: .*a\.toml -> .*b\.toml -> .*a\.toml"):
        load_recipe(tmp_path / "a.toml", families=FAMILIES)


def test_error_in_an_included_file_names_that_file(tmp_path):
    write(tmp_path, "base.toml", 'model = "toy-t2v"\n[video]\nframes = 10\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "r.toml", 'include = "base.toml"\n[prompt]\ntext = "x"\n'), families=FAMILIES)
    assert err.value.problems[0].split(":")[0].endswith("base.toml")


def test_set_overrides_win_are_typed_and_named_in_errors(tmp_path):
    path = write(tmp_path, "r.toml", BASIC)
    r = load_recipe(path, sets=["sampler.cfg=6", "prompt.text=a dog on a skateboard"], families=FAMILIES)
    assert r.values["sampler.cfg"] == 6.0 and r.origins["sampler.cfg"] == "--set"
    assert r.values["prompt.text"] == "a dog on a skateboard"
    with pytest.raises(RecipeError, match=r"--set sampler.steps=0: \[sampler\].steps = 0: must be ≥ 1"):
        load_recipe(path, sets=["sampler.steps=0"], families=FAMILIES)
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(path, sets=["sampler.steps"], families=FAMILIES)


def test_every_problem_is_reported_at_once(tmp_path):
    text = BASIC + "[video]\nframes = 10\nwidth = 65\n[sampler]\ncfg = -2\nstpes = 4\n"
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "r.toml", text), families=FAMILIES)
    assert len(err.value.problems) == 4
    assert all(p.startswith("r.toml: ") or "r.toml" in p for p in err.value.problems)


def test_input_paths_resolve_against_the_file_that_names_them(tmp_path, monkeypatch):
    write(tmp_path, "assets/in.png", "png")
    write(tmp_path, "base/b.toml", 'model = "toy-i2v"\n[inputs]\nimage = "../assets/in.png"\n')
    monkeypatch.chdir(tmp_path / "base")
    r = load_recipe(write(tmp_path, "r.toml", 'include = "base/b.toml"\n[prompt]\ntext = "x"\n'), families=FAMILIES)
    assert r.input_files() == {"inputs.image": (tmp_path / "assets/in.png").resolve()}
    assert r.values["inputs.image"] == str((tmp_path / "assets/in.png").resolve())


def test_required_input_and_unaccepted_input(tmp_path):
    with pytest.raises(RecipeError, match=r"\[inputs\].image: is required by toy-i2v"):
        load_recipe(write(tmp_path, "r.toml", 'model = "toy-i2v"\n[prompt]\ntext = "x"\n'), families=FAMILIES)
    write(tmp_path, "a.wav", "")
    with pytest.raises(RecipeError, match="toy-t2v does not take this input"):
        load_recipe(write(tmp_path, "s.toml", BASIC + '[inputs]\naudio = "a.wav"\n'), families=FAMILIES)


def test_sweep_expands_to_the_product_with_labels_and_origins(tmp_path):
    text = BASIC + '[sweep]\n"sampler.seed" = [0, 1]\n"prompt.text" = ["a", "b", "c"]\n'
    r = load_recipe(write(tmp_path, "r.toml", text), families=FAMILIES)
    jobs = r.sweep_jobs()
    assert len(jobs) == 6
    assert [(j.values["sampler.seed"], j.values["prompt.text"]) for j in jobs][:3] == [(0, "a"), (0, "b"), (0, "c")]
    assert jobs[4].job_label == "sampler.seed=1,prompt.text=b" and jobs[4].origins["sampler.seed"] == "sweep"
    assert "sweep" not in r.values


def test_sweep_value_errors_name_the_job(tmp_path):
    text = BASIC + '[sweep]\n"video.frames" = [9, 10]\n'
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "r.toml", text), families=FAMILIES)
    assert [p.replace(str(tmp_path) + "/", "") for p in err.value.problems] == ['video.frames=10: r.toml [sweep]."video.frames": [video].frames = 10: must be 4n+1 (9 or 13): '
                                  "the causal VAE encodes the first frame alone and then groups of 4"]


def test_canonical_toml_round_trips_to_the_same_values(tmp_path):
    r = load_recipe(write(tmp_path, "r.toml", BASIC + "[sampler]\nseed = 4\n"), families=FAMILIES)
    again = load_recipe(write(tmp_path, "resolved.toml", r.canonical_toml()), families=FAMILIES)
    assert {k: v for k, v in again.values.items() if k != "name"} == {k: v for k, v in r.values.items() if k != "name"}
