"""The plugin registry: built-ins through the public hooks, third-party additions, collisions."""

from __future__ import annotations

import types

import pytest

from wanflow.errors import PluginError, RecipeError
from wanflow.plugins import build_registry, hookimpl
from wanflow.recipe import ComponentSpec, FamilySpec, load_recipe

OFFICIAL = {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p",
            "wan2.1-flf2v-14b-720p", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "wanflow-tiny"}
#: The derivative models: VACE, Wan-Fun (V1.0, V1.1, Wan2.2 A14B), speed control, Krea Realtime,
#: Video-As-Prompt, speech-to-video.
DERIVATIVES = {"wan2.1-vace-1.3b-preview", "wan2.1-vace-1.3b", "wan2.1-vace-14b", "wan2.2-vace-fun-a14b",
               "wan2.1-fun-1.3b-inp", "wan2.1-fun-14b-inp", "wan2.1-fun-1.3b-control", "wan2.1-fun-14b-control",
               "wan2.1-fun-v1.1-1.3b-inp", "wan2.1-fun-v1.1-14b-inp", "wan2.1-fun-v1.1-1.3b-control",
               "wan2.1-fun-v1.1-14b-control", "wan2.1-fun-v1.1-1.3b-control-camera",
               "wan2.1-fun-v1.1-14b-control-camera", "wan2.2-fun-a14b-inp", "wan2.2-fun-a14b-control",
               "wan2.2-fun-a14b-control-camera", "wan2.1-1.3b-speedcontrol", "krea-realtime-video",
               "video-as-prompt-wan2.1-14b", "wan2.2-s2v-14b", "wan2.2-animate-14b"}
DERIVATIVES |= {"longcat-video"}


def _family(name: str) -> FamilySpec:
    return FamilySpec(name, "from a plugin", {"dit": ComponentSpec("dit", "x", ("*.safetensors",))},
                      {"video.frames": 5}, spatial_factor=8)


def test_builtins_register_through_the_hooks():
    registry = build_registry(entry_points=False)
    assert set(registry.family_names()) == OFFICIAL | DERIVATIVES
    assert registry.solver_names() == ["dpm++", "euler", "flow", "krea-causal", "longcat", "longcat-distill", "unipc"]
    assert all(registry.owner("family", n) == "wanflow" for n in OFFICIAL | DERIVATIVES)
    assert registry.plugins()[0][0] == "wanflow"


def test_a_plugin_family_is_usable_in_recipes(tmp_path):
    plugin = types.SimpleNamespace(wanflow_families=hookimpl(lambda: [_family("my-wan")]), __version__="2.0")
    registry = build_registry([("mine", plugin)], entry_points=False)
    path = tmp_path / "r.toml"
    path.write_text('model = "my-wan"\n[prompt]\ntext = "x"\n[video]\nwidth = 24\nheight = 40\n')
    resolved = load_recipe(path, families=registry)
    assert resolved.values["video.frames"] == 5 and ("mine", "2.0") in registry.plugins()
    path.write_text('model = "my-wan"\n[prompt]\ntext = "x"\n[video]\nwidth = 20\n')
    with pytest.raises(RecipeError, match="multiple of 8 for my-wan"):
        load_recipe(path, families=registry)


def test_family_name_collision_names_both_plugins():
    plugin = types.SimpleNamespace(wanflow_families=hookimpl(lambda: [_family("wan2.1-t2v-1.3b")]))
    with pytest.raises(PluginError, match="'wan2.1-t2v-1.3b' is registered by both plugin 'wanflow' and plugin 'rogue'"):
        build_registry([("rogue", plugin)], entry_points=False)


def test_a_broken_entry_point_is_reported(monkeypatch):
    import pluggy

    def explode(self, group, name=None):
        raise ImportError("no module named fancy")

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", explode)
    with pytest.raises(PluginError, match="failed to load.*WANFLOW_NO_PLUGINS=1"):
        build_registry(entry_points=True)


def test_environment_switch_turns_entry_points_off(monkeypatch):
    monkeypatch.setenv("WANFLOW_NO_PLUGINS", "1")
    assert "gif" not in build_registry().savers
    monkeypatch.delenv("WANFLOW_NO_PLUGINS")
    assert "gif" in build_registry().savers


def test_step_kinds_and_pipelines_are_registered_with_their_owner():
    class Kind:
        kind, version, reads, output = "my-upscale", 1, ("video.width",), "tensors"

    plugin = types.SimpleNamespace(wanflow_step_kinds=hookimpl(lambda: [Kind()]),
                                   wanflow_pipelines=hookimpl(lambda: {"my-pipe": object()}))
    registry = build_registry([("up", plugin)], entry_points=False)
    assert registry.step_kinds["my-upscale"].version == 1 and registry.owner("step kind", "my-upscale") == "up"
    assert registry.owner("pipeline", "my-pipe") == "up"


def test_observer_hooks_see_every_step_of_a_run(tmp_path, monkeypatch):
    """A plugin observing `wanflow run` of the quickstart: each step starts and finishes once."""
    from pathlib import Path

    import wanflow.plugins
    from wanflow.cli import main

    seen: list[tuple[str, str, bool | None]] = []
    plugin = types.SimpleNamespace(
        wanflow_step_started=hookimpl(lambda step: seen.append(("start", step["node"], None))),
        wanflow_step_finished=hookimpl(lambda step, outcome: seen.append(("end", step["node"], outcome["hit"]))))
    registry = build_registry([("watcher", plugin)], entry_points=False)
    monkeypatch.setattr(wanflow.plugins, "get_registry", lambda: registry)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.toml"
    args = ["run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--set", "sampler.steps=1"]
    assert main(args) == 0
    nodes = [n for kind, n, _ in seen if kind == "start"]
    assert len(nodes) == 6 and [n for kind, n, _ in seen if kind == "end"] == nodes  # cfg 2: two text encodes
    assert not any(hit for kind, _, hit in seen if kind == "end")
    seen.clear()
    assert main(args) == 0
    assert [hit for kind, _, hit in seen if kind == "end"] == [True] * 6
