"""Planning needs no weights: explain and diff plan offline, and a run that lacks weights says
once which components are missing, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e._layout import write_models_root
from tests.e2e.conftest import write_recipe
from wanflow.engine.cache import Cache
from wanflow.engine.execute import Executor
from wanflow.engine.explain import explain
from wanflow.engine.runner import plan_job
from wanflow.errors import EngineError, ModelLoadError
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe


@pytest.fixture()
def partial_root(tmp_path, monkeypatch):
    """A models root holding only Wan2.1-T2V-1.3B; WANFLOW_OFFLINE is NOT set."""
    root = write_models_root(tmp_path / "models", families=("wan2.1-t2v-1.3b",))
    monkeypatch.setenv("WANFLOW_MODELS", str(root))
    monkeypatch.delenv("WANFLOW_OFFLINE", raising=False)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    return root


def _no_download(monkeypatch):
    import wanflow.sources.fetch as fetch

    def refuse(*args, **kwargs):
        raise AssertionError("planning tried to download")

    monkeypatch.setattr(fetch, "modelscope_download", refuse)
    monkeypatch.setattr(fetch, "modelscope_commit", refuse)


def _planning(tmp_path, model: str):
    resolved = load_recipe(write_recipe(tmp_path, model))
    return resolved, get_registry().pipeline(resolved.model).planning_only()


def test_explain_plans_a_family_whose_weights_are_absent(partial_root, tmp_path, monkeypatch):
    _no_download(monkeypatch)
    resolved, pipeline = _planning(tmp_path, "wan2.1-t2v-14b")
    with Cache() as cache:
        the_plan = plan_job(resolved, pipeline, cache)
        lines = {e.node: e.line() for e in explain(the_plan, cache)}
        assert "will run: weights not present" in lines["denoise"]
        assert "will run: weights not present" in lines["encode-text:positive"]
        assert "weights not present" not in lines["save-metadata"]
        with pytest.raises(EngineError, match="can be explained but not run"):
            Executor(the_plan, cache).run()


def test_present_weights_plan_as_usual_without_downloads(partial_root, tmp_path, monkeypatch):
    _no_download(monkeypatch)
    resolved, pipeline = _planning(tmp_path, "wan2.1-t2v-1.3b")
    with Cache() as cache:
        the_plan = plan_job(resolved, pipeline, cache)
        assert the_plan.absent_weights() == []
        assert all("not present" not in e.line() for e in explain(the_plan, cache))


def test_a_run_names_every_missing_component_at_once(partial_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    resolved = load_recipe(write_recipe(tmp_path, "wan2.2-i2v-a14b", {"image": _image(tmp_path)}))
    with pytest.raises(ModelLoadError) as caught:
        get_registry().pipeline(resolved.model).steps(resolved)
    message = str(caught.value)
    for component in ("dit_high_noise", "dit_low_noise", "text_encoder", "vae"):
        assert f"- {component}:" in message
    assert "component(s) cannot be used yet" in message


def _image(folder):
    from PIL import Image

    path = folder / "in.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path


def test_explain_dry_run_and_diff_work_offline_without_the_weights(partial_root, tmp_path,
                                                                    monkeypatch, capsys):
    from wanflow.cli import main

    _no_download(monkeypatch)
    recipe = write_recipe(tmp_path, "wan2.1-t2v-14b")
    assert main(["explain", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "denoise" in out and "will run: weights not present" in out
    assert "not on this machine: dit, text_encoder, tokenizer, vae" in out
    assert "WANFLOW_OFFLINE" not in out
    assert main(["run", str(recipe), "--dry-run"]) == 0
    assert "denoise" in capsys.readouterr().out
    other = tmp_path / "other.toml"
    other.write_text(recipe.read_text().replace("wan2.1-t2v-14b", "wan2.1-t2v-1.3b"))
    assert main(["diff", str(recipe), str(other)]) == 0
    out = capsys.readouterr().out
    assert "model" in out and "denoise" in out and "encode-text:positive" in out


def test_every_job_of_a_sweep_is_planned_before_the_first_runs(tmp_path, monkeypatch):
    """A refusal that only planning can give (no saver for the second job's format) comes before
    any step of the first job runs."""
    from tests.e2e._run import run
    from wanflow.errors import RecipeError

    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "sweep.toml"
    recipe.write_text('model = "wanflow-tiny"\n[prompt]\ntext = "a red ball"\n[sampler]\nseed = 1\n'
                      '[sweep]\n"output.format" = ["mp4", "webm"]\n')

    def never(*_):
        raise AssertionError("a step ran")

    monkeypatch.setattr(Executor, "run", never)
    with pytest.raises(RecipeError, match="webm"):
        run(recipe, tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("COMPLETE"))


def test_wanflow_plan_prints_the_placement_or_refuses_with_the_numbers(tmp_path, monkeypatch, capsys):
    from wanflow.cli import main

    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    quickstart = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"
    assert main(["plan", str(quickstart)]) == 0
    out = capsys.readouterr().out
    assert "dit: in RAM" in out and "step denoise: peak host" in out
    assert main(["plan", str(quickstart), "--set", "memory.limit_gb=0.001"]) == 2
    assert "the cheapest change that fits: a host budget of" in capsys.readouterr().err
