"""[sampler.cache] through the real pipeline: keyed, honoured, refused where it cannot apply."""

from __future__ import annotations

import pytest

from tests.e2e._run import computed, run
from tests.e2e.conftest import write_recipe
from tests.e2e.test_key_identity import planned, static_keys
from wanflow.errors import RecipeError
from wanflow.recipe import load_recipe


def quick(folder, cache: dict | None = None):
    path = folder / "q.toml"
    body = 'name = "q"\nmodel = "wanflow-tiny"\n[prompt]\ntext = "a red ball"\n[sampler]\nseed = 2\nsteps = 6\n'
    if cache:
        body += "[sampler.cache]\n" + "".join(f"{k} = {v}\n" for k, v in cache.items())
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ['"first-block"', '"easycache"'])
def test_a_cache_setting_reruns_denoise_and_after_only(tmp_path, monkeypatch, method):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    base = run(quick(tmp_path), tmp_path / "runs")
    cached = run(quick(tmp_path, {"method": method, "threshold": 5.0}), tmp_path / "runs")
    assert computed(cached) == {"denoise", "decode", "save", "save-metadata"}
    assert cached.results["denoise"].digest != base.results["denoise"].digest
    other = run(quick(tmp_path, {"method": method, "threshold": 6.0}), tmp_path / "runs")
    assert other.results["denoise"].key != cached.results["denoise"].key


@pytest.mark.parametrize(("cache", "message"), [
    ({"method": '"teacache"', "threshold": 0.1, "target_speedup": 2.0}, "exactly one of threshold and target"),
    ({"method": '"first-block"', "target_speedup": 2.0}, "only TeaCache's plan is known"),
    ({"method": '"easycache"', "target_speedup": 2.0}, "only TeaCache's plan is known"),
    ({"method": '"magcache"', "threshold": 0.1}, "MagCache needs the ratios"),
])
def test_cache_settings_that_cannot_work_are_refused_at_validation(tmp_path, cache, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(quick(tmp_path, cache))


def test_teacache_on_wan22_needs_calibrated_coefficients(env, tmp_path):
    recipe = write_recipe(tmp_path, "wan2.2-t2v-a14b", sampler={"cache": {"method": "teacache", "threshold": 0.1}})
    with pytest.raises(RecipeError, match="no published TeaCache coefficients"):
        load_recipe(recipe)
    fine = write_recipe(tmp_path, "wan2.1-t2v-1.3b", sampler={"cache": {"method": "teacache", "threshold": 0.1}})
    assert static_keys(planned(fine))["denoise"]


def test_magcache_with_merged_guidance_passes_is_refused_naming_cfg_merge(tmp_path):
    ratios = "[1.0, 0.99, 0.98, 0.97, 0.96, 0.95]"
    path = quick(tmp_path, {"method": '"magcache"', "threshold": 0.5, "ratios_cond": ratios, "ratios_uncond": ratios})
    load_recipe(path)  # separate passes: each has its ratios
    path.write_text(path.read_text(encoding="utf-8").replace("steps = 6\n", "steps = 6\ncfg_merge = true\n"),
                    encoding="utf-8")
    with pytest.raises(RecipeError, match=r"\[sampler\].cfg_merge = true: .*set cfg_merge = false"):
        load_recipe(path)


def _sampler_lines(path, lines: str):
    """``lines`` added to [sampler], over 17 frames (5 latent frames: room for two windows)."""
    text = path.read_text(encoding="utf-8").replace("steps = 6\n", "steps = 6\n" + lines)
    path.write_text(text + "[video]\nframes = 17\n", encoding="utf-8")
    return path


def test_a_cache_runs_with_sliding_windows_each_window_a_branch_of_its_own(tmp_path, monkeypatch):
    """Two windows of the tiny clip (5 latent frames: windows [0, 4) and [2, 5)): every window of
    every pass keeps its own branch, and each computes exactly the steps the first-block rule lets
    it (a threshold of 0 computes all; a huge one only the first step)."""
    from wanflow.sampling.step_cache import StepCache

    seen: list[StepCache] = []
    init = StepCache.__init__
    monkeypatch.setattr(StepCache, "__init__", lambda self, *a, **k: seen.append(self) or init(self, *a, **k))
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    windows = "sliding_window_size = 4\nsliding_window_stride = 2\ncfg = 3.0\n"
    for threshold, computed_steps in ((0.0, tuple(range(6))), (1e9, (0,))):
        seen.clear()
        path = _sampler_lines(quick(tmp_path, {"method": '"first-block"', "threshold": threshold}), windows)
        run(path, tmp_path / "runs")
        (cache,) = seen
        assert sorted(cache.branches) == ["cond@0:4", "cond@2:5", "uncond@0:4", "uncond@2:5"]
        assert {b: cache.computed_steps(b) for b in cache.branches} == dict.fromkeys(cache.branches, computed_steps)


def test_a_cache_that_never_skips_leaves_windows_and_skip_layer_guidance_as_they_were(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    lines = "sliding_window_size = 4\nsliding_window_stride = 2\ncfg = 3.0\nslg_blocks = [0]\nslg_scale = 2.0\n"
    plain = run(_sampler_lines(quick(tmp_path), lines), tmp_path / "runs")
    never = run(_sampler_lines(quick(tmp_path, {"method": '"first-block"', "threshold": 0.0}), lines),
                tmp_path / "runs")
    skipping = run(_sampler_lines(quick(tmp_path, {"method": '"first-block"', "threshold": 1e9}), lines),
                   tmp_path / "runs")
    assert never.results["denoise"].key != plain.results["denoise"].key  # the cache is keyed
    assert never.results["denoise"].digest == plain.results["denoise"].digest  # computes every step: same numbers
    assert skipping.results["denoise"].digest != plain.results["denoise"].digest


POLY = "[1.0, -2.0, 3.0, 0.5, 0.01]"


def test_a_high_noise_polynomial_is_read_by_that_expert_and_refused_where_nothing_reads_it(env, tmp_path):
    from wanflow.steps.denoise import cache_settings

    both = {"method": "teacache", "threshold": 0.1, "coefficients": "calibrated", "calibrated": [0.5, 1.0]}
    (tmp_path / "own").mkdir()
    a14b = write_recipe(tmp_path / "own", "wan2.2-t2v-a14b",
                        sampler={"cache": {**both, "calibrated_high_noise": [2.0, 3.0]}})
    values = load_recipe(a14b).values
    assert cache_settings(values, "dit_high_noise").calibrated == (2.0, 3.0)
    assert cache_settings(values, "dit_low_noise").calibrated == (0.5, 1.0)
    one = write_recipe(tmp_path, "wan2.2-t2v-a14b", sampler={"cache": both})
    assert cache_settings(load_recipe(one).values, "dit_high_noise").calibrated == (0.5, 1.0)  # one serves both
    assert static_keys(planned(a14b))["denoise"] != static_keys(planned(one))["denoise"]
    for cache, message in (
            ({**both, "coefficients": "auto", "calibrated": [], "calibrated_high_noise": [2.0]},
             r'calibrated_high_noise = \[2.0\]: .* reads it only with coefficients = "calibrated"'),
            ({"method": "easycache", "threshold": 0.1, "calibrated_high_noise": [2.0]}, "EasyCache needs no calibration")):
        with pytest.raises(RecipeError, match=message):
            load_recipe(write_recipe(tmp_path, "wan2.2-t2v-a14b", sampler={"cache": cache}))
    single = write_recipe(tmp_path, "wan2.1-t2v-1.3b", sampler={"cache": {**both, "calibrated_high_noise": [2.0]}})
    with pytest.raises(RecipeError, match="wan2.1-t2v-1.3b has one DiT: remove it"):
        load_recipe(single)
