"""Parsing source strings: ModelScope ids and revisions, builtin names, local paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanflow.errors import ModelLoadError
from wanflow.sources import cache_root, parse_source
from wanflow.sources import spec


def test_modelscope_revision_defaults_to_master_and_can_be_pinned():
    plain = parse_source("modelscope:Wan-AI/Wan2.1-T2V-1.3B")
    pinned = parse_source("modelscope:Wan-AI/Wan2.1-T2V-1.3B@v1.0.2")
    assert (plain.kind, plain.repo, plain.revision) == ("modelscope", "Wan-AI/Wan2.1-T2V-1.3B", "master")
    assert pinned.revision == "v1.0.2"
    assert plain.canonical == "modelscope:Wan-AI/Wan2.1-T2V-1.3B@master"
    assert parse_source("modelscope:Wan-AI/X@feature/a-1").revision == "feature/a-1"


@pytest.mark.parametrize("bad", ["@", "@with space", "@../etc", "@-x", "@a;b", "@trailing/"])
def test_an_invalid_revision_is_a_clear_error(bad):
    with pytest.raises(ModelLoadError, match=r"revision .* is not a branch, tag or commit"):
        parse_source(f"modelscope:Wan-AI/Wan2.1-T2V-1.3B{bad}")


@pytest.mark.parametrize("bad", ["modelscope:Wan2.1-T2V-1.3B", "modelscope:a/b/c", "modelscope:../x/y", "modelscope:"])
def test_an_invalid_repository_id_is_a_clear_error(bad):
    with pytest.raises(ModelLoadError, match="not a ModelScope repository id; write modelscope:ORG/REPO"):
        parse_source(bad)


def test_builtin_resolves_into_the_package_assets_even_if_absent():
    src = parse_source("builtin:wanflow-tiny")
    assert src.path == Path(spec.__file__).resolve().parents[1] / "assets" / "wanflow-tiny"
    assert src.canonical == "builtin:wanflow-tiny"
    with pytest.raises(ModelLoadError, match="not a builtin model name"):
        parse_source("builtin:../escape")


def test_local_paths_resolve_against_the_recipe_folder(tmp_path):
    assert parse_source("weights/dit", base_dir=tmp_path).path == tmp_path / "weights" / "dit"
    assert parse_source(str(tmp_path / "a.pth")).path == tmp_path / "a.pth"
    with pytest.raises(ModelLoadError, match="empty"):
        parse_source("  ")


def test_cache_root_is_modelscope_layout_or_the_models_root(tmp_path, monkeypatch):
    src = parse_source("modelscope:Wan-AI/Wan2.1-T2V-1.3B")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    assert cache_root(src, None) == tmp_path / "ms" / "models" / "Wan-AI" / "Wan2___1-T2V-1___3B"
    assert cache_root(src, tmp_path / "m") == tmp_path / "m" / "Wan-AI" / "Wan2.1-T2V-1.3B"
