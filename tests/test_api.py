"""The library API over the real quickstart family: load (file or dict), validate, run, results."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import structlog

import wanflow
from wanflow.errors import EngineError, RecipeError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
#: The quickstart made small, with guidance (so a negative encode too): six steps in about a second.
SMALL = {"video": {"frames": 5, "width": 32, "height": 32}, "sampler": {"steps": 2, "cfg": 3.0},
         "prompt": {"negative": "blurry, static"}}
NODES = ("encode-text:positive", "encode-text:negative", "denoise", "decode", "save", "save-metadata")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    return {"runs_dir": tmp_path / "runs", "cache_dir": tmp_path / "cache"}


def test_a_dict_recipe_is_the_file_recipe_and_resolves_paths_against_base_dir(tmp_path):
    from_file = wanflow.load(QUICKSTART, {"sampler.steps": 3})
    as_dict = {"schema": 1, "name": "quickstart", "model": "wanflow-tiny",
               "prompt": {"text": "a yellow triangle moving right"}, "sampler": {"seed": 0}}
    from_dict = wanflow.load(as_dict, {"sampler": {"steps": 3}})
    assert dict(from_dict.values) == dict(from_file.values) and from_file.values["sampler.steps"] == 3
    assert (from_dict.name, from_dict.model, from_dict.jobs) == ("quickstart", "wanflow-tiny", 1)

    (tmp_path / "base.toml").write_text("[sampler]\nsteps = 2\ncfg = 3.5\n", encoding="utf-8")
    child = {"include": ["base.toml"], "model": "wanflow-tiny", "prompt": {"text": "a cat"}}
    loaded = wanflow.load(child, base_dir=tmp_path)
    assert (loaded.values["sampler.steps"], loaded.values["sampler.cfg"]) == (2, 3.5)
    assert loaded.name == "recipe"  # a dict without a name files its runs under runs/recipe/
    with pytest.raises(RecipeError, match="base.toml"):
        wanflow.load(child, base_dir=tmp_path / "elsewhere")


def test_overrides_are_set_items_later_ones_win_and_none_is_refused():
    recipe = wanflow.load(QUICKSTART, ["sampler.seed=5", "prompt.text=a blue cube"])
    assert (recipe.values["sampler.seed"], recipe.values["prompt.text"]) == (5, "a blue cube")
    again = recipe.with_overrides({"sampler.seed": 6, "video.width": 32})
    assert (again.values["sampler.seed"], again.values["video.width"], again.values["prompt.text"]) == (
        6, 32, "a blue cube")
    with pytest.raises(RecipeError, match="sampler.cfg = None: TOML has no null"):
        wanflow.load(QUICKSTART, {"sampler.cfg": None})
    with pytest.raises(RecipeError, match="not one string"):
        wanflow.load(QUICKSTART, "sampler.seed=1")


def test_validate_returns_every_problem_instead_of_raising():
    assert wanflow.validate(QUICKSTART) == []
    problems = wanflow.validate({"model": "wanflow-tiny", "prompt": {"text": "x"},
                                 "video": {"frames": 8}, "sampler": {"cfg_scale": 5}})
    assert len(problems) == 2
    assert any("[video].frames = 8: must be 4n+1" in p for p in problems)
    assert any("cfg_scale" in p for p in problems)
    assert all(p.startswith("recipe.toml: ") for p in problems)  # a dict stands for base_dir/recipe.toml
    with pytest.raises(RecipeError, match=re.escape("[video].frames = 8")):
        wanflow.load(QUICKSTART, {"video.frames": 8})


def test_run_returns_the_video_archive_frames_and_per_step_hits(dirs):
    first = wanflow.run(QUICKSTART, SMALL, **dirs)
    assert first.computed == NODES and first.hits == ()
    assert first.steps["denoise"].duration_s > 0 and first.steps["denoise"].reasons == ("never run",)
    assert first.video == first.archive / "outputs" / "video.mp4" and first.video.stat().st_size > 0
    assert set(first.outputs) == {"video.mp4", "video.json"} and all(p.is_file() for p in first.outputs.values())
    assert first.archive.parent == dirs["runs_dir"] / "quickstart" and first.seed == 0

    frames = first.frames()
    assert frames.dtype == np.uint8 and frames.shape == (5, 32, 32, 3)

    second = wanflow.run(QUICKSTART, SMALL, **dirs)
    assert second.hits == NODES and second.computed == () and second.archive != first.archive
    assert np.array_equal(second.frames(), frames)
    assert second.video.read_bytes() == first.video.read_bytes()

    reseeded = wanflow.run(QUICKSTART, {**SMALL, "sampler.seed": 1}, **dirs)
    assert reseeded.seed == 1 and reseeded.hits == ("encode-text:positive", "encode-text:negative")
    from wanflow.output.video import read_frames

    decoded = read_frames(first.video).ravel()  # a lossy (x264, 4:2:0) copy of exactly these frames
    own, other = np.corrcoef(decoded, frames.ravel())[0, 1], np.corrcoef(decoded, reseeded.frames().ravel())[0, 1]
    assert own > 0.85 and own > other + 0.05, (own, other)  # these frames, not another seed's


def test_frames_evicted_from_the_cache_are_a_clear_error(dirs):
    result = wanflow.run(QUICKSTART, SMALL, **dirs)
    from wanflow.engine.cache import Cache

    with Cache(dirs["cache_dir"]) as cache:
        cache.clear()
    with pytest.raises(EngineError, match="no longer in the cache"):
        result.frames()


def test_a_sweep_needs_run_all_which_returns_every_job(dirs):
    swept = {"name": "swept", "model": "wanflow-tiny", "prompt": {"text": "a red ball"},
             "video": {"frames": 1, "width": 16, "height": 16}, "sampler": {"steps": 1},
             "sweep": {"sampler.seed": [3, 4]}}
    with pytest.raises(RecipeError, match=r"\[sweep\] makes 2 jobs.*run_all"):
        wanflow.run(swept, **dirs)
    assert not dirs["runs_dir"].exists()  # refused before anything ran
    first, second = wanflow.run_all(swept, **dirs)
    assert (first.seed, second.seed) == (3, 4) and first.job != second.job
    assert "encode-text:positive" in first.computed and "encode-text:positive" in second.hits
    assert first.archive.parent == second.archive.parent == dirs["runs_dir"] / "swept"


def test_library_use_prints_nothing_until_logging_is_configured(dirs, capfd, caplog):
    structlog.reset_defaults()  # as in a fresh notebook
    wanflow.run(QUICKSTART, SMALL, **dirs)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert not [r for r in caplog.records if r.name.startswith("wanflow")]  # nothing at INFO yet

    caplog.set_level(logging.DEBUG, logger="wanflow")
    wanflow.run(QUICKSTART, SMALL, **dirs)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("wanflow")]
    assert sum(m.startswith("step.hit node=") for m in messages) == len(NODES)
    assert capfd.readouterr() == ("", "")  # logging's own handler (caplog) got them, not the terminal


def test_the_readme_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    """README's five lines, on the real Wan2.1-T2V-1.3B family (tiny weights in its ModelScope
    layout, made small by overrides the snippet does not show)."""
    from tests.e2e._layout import write_models_root

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) == 6  # five statements, the run call on two lines
    monkeypatch.setenv("WANFLOW_MODELS", str(write_models_root(tmp_path / "models", ("wan2.1-t2v-1.3b",))))
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    from wanflow import api

    full_run = api.run
    monkeypatch.setattr(api, "run", lambda source, **kw: full_run(source, SMALL, **kw))
    names: dict = {}
    exec(snippet, names)  # noqa: S102 - the README's own code
    result, frames = names["result"], names["frames"]
    assert result.video.resolve() == (tmp_path / capsys.readouterr().out.strip()).resolve()
    assert result.archive.parent == Path("runs") / "recipe" and result.computed == NODES
    assert frames.shape == (5, 32, 32, 3) and result.seed == 0
