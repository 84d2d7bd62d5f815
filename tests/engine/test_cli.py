from __future__ import annotations

import argparse
from pathlib import Path

import attrs
import pytest

from wanflow.cli import engine_cmds
from wanflow.errors import ArchiveError, EngineError

from ._fakes import load_text
from .conftest import count


@pytest.fixture
def cli(world, tmp_path, monkeypatch, capsys):
    resolved, pipe = world
    recipes = {"a.toml": resolved, "b.toml": attrs.evolve(
        resolved, values={**resolved.values, "sampler.cfg": 6.0})}
    for name in recipes:
        (tmp_path / name).write_text("fake")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine_cmds, "_load", lambda p, sets: recipes[Path(p).name])
    monkeypatch.setattr(engine_cmds, "_load_text", load_text)
    monkeypatch.setattr(engine_cmds, "_pipeline_for", lambda model: pipe)
    monkeypatch.setattr(engine_cmds, "_plugins", lambda: (("wanflow", "0.1.0"),))
    parser = argparse.ArgumentParser(prog="wanflow")
    engine_cmds.register(parser.add_subparsers(dest="command", required=True))

    def call(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(argv)
        rc = args.func(args)
        return rc, capsys.readouterr().out

    return call


def test_run_explain_runs_and_diff_end_to_end(cli, counts, tmp_path) -> None:
    rc, out = cli("run", "a.toml", "--explain")
    assert rc == 0 and "never run" in out and "(0 hit, 6 computed)" in out
    rc, out = cli("explain", "b.toml")
    assert f"{'denoise':<40} miss because [sampler].cfg 5.0 → 6.0" in out  # the node column of run's lines
    assert count(counts, "denoise") == 1  # explain never runs anything
    rc, out = cli("run", "b.toml")
    assert "(3 hit, 3 computed)" in out
    rc, out = cli("runs")
    assert out.count("runs/fake/") == 2 and "incomplete" not in out
    a, b = sorted((tmp_path / "runs" / "fake").iterdir())
    rc, out = cli("diff", str(a), str(b), "--format", "md")
    assert "| `[sampler].cfg` | `5.0` | `6.0` | `denoise`, `decode`, `save` |" in out
    rc, out = cli("diff", "a.toml", "b.toml")
    assert "[sampler].cfg: 5.0 → 6.0   re-runs: denoise, decode, save" in out and "lock:" not in out
    rc, out = cli("reproduce", str(a), "--runs-dir", str(tmp_path / "repro"))
    assert rc == 0 and "video.bin: bit-identical" in out


def test_dry_run_prints_the_plan_and_runs_nothing(cli, counts, tmp_path) -> None:
    rc, out = cli("run", "a.toml", "--dry-run")
    assert rc == 0 and out.splitlines()[0] == "fake"
    assert "denoise" in out and "pos←encode-text:positive" in out
    assert count(counts, "denoise") == 0 and not (tmp_path / "runs").exists()


def test_cache_commands_find_and_heal_a_flipped_byte(cli, counts, tmp_path) -> None:
    cli("run", "a.toml", "--quiet")
    objects = sorted(p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file())
    video = max(objects, key=lambda p: p.stat().st_size)  # the saved video
    raw = bytearray(video.read_bytes())
    raw[0] ^= 0xFF
    video.write_bytes(bytes(raw))
    rc, out = cli("cache", "verify")
    assert rc == 1 and "1 corrupt" in out and f"corrupt: {video.parent.name}{video.name}" in out
    rc, out = cli("run", "a.toml")
    assert "(5 hit, 1 computed)" in out and count(counts, "save") == 2
    assert cli("cache", "verify")[0] == 0
    rc, out = cli("cache", "stats")
    assert f"objects: {len(objects)}" in out
    rc, out = cli("cache", "gc", "--max-size", "0")
    assert "freed" in out and cli("cache", "stats")[1].count("objects: 0") == 1
    cli("cache", "clear")
    assert not (tmp_path / "cache" / "objects").exists()


def test_bad_paths_are_clear_errors(cli, tmp_path) -> None:
    with pytest.raises(EngineError, match="nope.toml does not exist"):
        cli("diff", "nope.toml", "a.toml")
    with pytest.raises(ArchiveError, match="does not exist"):
        cli("reproduce", str(tmp_path / "no-archive"))


def test_real_loader_refuses_a_missing_recipe(tmp_path) -> None:
    with pytest.raises(EngineError, match="recipe .*missing.toml does not exist"):
        engine_cmds._load(str(tmp_path / "missing.toml"), ())


def test_real_recipe_loader_run_explain_reproduce_diff(world, tmp_path, monkeypatch, capsys,
                                                       counts) -> None:
    from ._fakes import ValuesPipeline

    recipe = Path(__file__).parents[2] / "recipes" / "quickstart.toml"
    if not recipe.is_file():
        pytest.skip("recipes/quickstart.toml is not there")
    (tmp_path / "q.toml").write_text(recipe.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    pipe = ValuesPipeline(world[1].weights)
    monkeypatch.setattr(engine_cmds, "_pipeline_for", lambda model: pipe)
    monkeypatch.setattr(engine_cmds, "_plugins", lambda: (("wanflow", "0.1.0"),))
    parser = argparse.ArgumentParser(prog="wanflow")
    engine_cmds.register(parser.add_subparsers(dest="command", required=True))

    def call(*argv: str) -> str:
        args = parser.parse_args(argv)
        assert args.func(args) in (0, 1)
        return capsys.readouterr().out

    assert "(0 hit, 5 computed)" in call("run", "q.toml")
    out = call("explain", "q.toml", "--set", "sampler.cfg=7.5")
    (line,) = [ln for ln in out.splitlines() if ln.startswith("denoise")]
    assert line.endswith("→ 7.5") and "[sampler].cfg" in line
    assert "(5 hit, 0 computed)" in call("run", "q.toml", "--set", "memory.policy=offload")
    first, second = sorted((tmp_path / "runs" / "quickstart").iterdir())
    assert "video.mp4: bit-identical" in call("reproduce", str(first), "--no-cache", "--quiet")
    assert count(counts, "denoise") == 2
    out = call("diff", str(first), str(second))
    assert '[memory].policy: "auto" → "offload"   re-runs: no step' in out
