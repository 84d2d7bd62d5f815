"""Plugin solvers and savers: they validate and run for every family, and their name@version is
in the key of every step that runs their code (an upgraded plugin is never served stale outputs)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tests.e2e._layout import REPOS
from tests.e2e.conftest import write_recipe
from wanflow.engine.cache import Cache
from wanflow.engine.keys import digest_file
from wanflow.engine.plan import plan
from wanflow.engine.runner import RunOptions, run_recipe
from wanflow.plugins import SamplerEntry, SaverEntry, build_registry, hookimpl
from wanflow.recipe import load_recipe

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.toml"


def _solver():
    """A plugin's solver: Euler steps on a grid of its own (its σ are squared)."""
    import torch

    from wanflow.sampling import Schedule, Solver, euler_step

    def schedule(steps: int, shift: float, strength: float = 1.0) -> Schedule:
        grid = torch.linspace(strength, 0.0, steps + 1, dtype=torch.float32) ** 2
        return Schedule(sigmas=grid, timesteps=grid[:-1] * 1000)

    return Solver("squared-euler", euler_step, schedule)


def _save_raw(frames, path, fps, metadata):
    path.write_bytes(b"RAW" + frames.tobytes())


def registry_with(version: str, saver_version: str = "1.0"):
    solver = types.SimpleNamespace(
        wanflow_samplers=hookimpl(lambda: [SamplerEntry("squared-euler", _solver, "test")]),
        __version__=version)
    saver = types.SimpleNamespace(
        wanflow_savers=hookimpl(lambda: [SaverEntry("raw", ".raw", lambda: _save_raw, "test")]),
        __version__=saver_version)
    return build_registry([("squares", solver), ("rawsave", saver)], entry_points=False)


def keys(registry, recipe: Path, *sets: str) -> dict[str, str]:
    from tests.e2e.test_key_identity import static_keys

    resolved = load_recipe(recipe, sets=sets, families=registry)
    specs = registry.pipeline(resolved.model).steps(resolved)
    return static_keys(plan(resolved.values, specs, "t", digest_file, env={"torch": "test"}))


def test_a_plugin_solver_validates_for_every_family(env, tmp_path):
    registry = registry_with("1.0")
    checked = []
    for name in registry.family_names():
        family = registry.family(name)
        if name not in REPOS and not name.startswith("wanflow-"):
            continue  # the derivative families' tiny repositories and inputs: their own e2e tests
        checked.append(name)
        inputs = {}
        for role in {"image", "end_image"} & set(family.required_inputs):
            from PIL import Image

            inputs[role] = tmp_path / f"{role}.png"
            Image.new("RGB", (32, 32), (10, 200, 30)).save(inputs[role])
        recipe = write_recipe(tmp_path, name, inputs, sampler={"solver": "squared-euler"})
        resolved = load_recipe(recipe, families=registry)
        specs = registry.pipeline(name).steps(resolved)
        denoise = next(s for s in specs if s.name == "denoise")
        assert denoise.step.solver.load().name == "squared-euler" and denoise.uses == ("squares@1.0",)
    assert len(checked) == len(REPOS) + 1  # the base families and the tiny one


def test_a_plugin_solver_and_saver_run_and_their_versions_key_their_steps(env, tmp_path):
    recipe = write_recipe(tmp_path, "wanflow-tiny", sampler={"solver": "squared-euler"},
                          output={"format": "raw"})
    old, new = keys(registry_with("1.0"), recipe), keys(registry_with("1.1"), recipe)
    changed = {n for n in old if old[n] != new[n]}
    assert changed == {"denoise", "decode", "save"}  # the solver's step and what it feeds
    resaved = keys(registry_with("1.0", saver_version="2.0"), recipe)
    assert {n for n in old if old[n] != resaved[n]} == {"save"}

    registry = registry_with("1.0")
    with Cache() as cache:
        outcome = run_recipe(load_recipe(recipe, families=registry), registry.pipeline, cache,
                             RunOptions(runs_dir=env, quiet=True))[0]
        data = (outcome.archive / "outputs" / "video.raw").read_bytes()
        assert data.startswith(b"RAW") and len(data) == 3 + 5 * 32 * 32 * 3
        euler = run_recipe(load_recipe(recipe, sets=("sampler.solver=euler",), families=registry),
                           registry.pipeline, cache, RunOptions(runs_dir=env, quiet=True))[0]
    assert outcome.results["denoise"].digest != euler.results["denoise"].digest


def test_an_unknown_solver_is_refused_at_validation(tmp_path):
    from wanflow.errors import RecipeError

    recipe = write_recipe(tmp_path, "wanflow-tiny", sampler={"solver": "squared-euler"})
    with pytest.raises(RecipeError, match="unknown solver"):
        load_recipe(recipe, families=build_registry(entry_points=False))
