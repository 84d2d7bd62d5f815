from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import attrs
import pytest
import tomlkit

from wanflow.engine import run_job, run_recipe
from wanflow.engine.runner import run_key
from wanflow.engine.archive import (
    COMPLETE_MARK, import_archive, list_runs, open_archive, safe_join)
from wanflow.errors import ArchiveError

from . import _fakes
from .conftest import count


def test_archive_holds_recipe_lock_events_and_outputs(world, cache, opts) -> None:
    resolved, pipe = world
    out = run_job(resolved, pipe, cache, opts)
    arc = out.archive
    assert arc.parent == opts.runs_dir / "fake" and arc.name.endswith("-" + run_key(out.results)[:8])
    assert (arc / "recipe.toml").read_text() == resolved.text
    assert (arc / "resolved.toml").read_text() == resolved.canonical_toml()
    lock = tomlkit.parse((arc / "lock.toml").read_text()).unwrap()
    assert lock["schema"] == 1 and lock["versions"]["torch"] == out.plan.env["torch"]
    assert lock["runtime"] == {"device": "cpu", "cuda": "none"}
    assert lock["plugins"] == {"wanflow": "0.1.0"}
    dit = lock["weights"]["denoise/dit"]
    assert dit["source"] == "local:dit" and dit["sha256"] == cache.memo.digest(pipe.weights["dit"])
    assert lock["inputs"]["inputs.image"]["sha256"] == cache.memo.digest(
        Path(resolved.values["inputs.image"]))
    assert {s["hit"] for s in lock["steps"].values()} == {False}
    video = (arc / "outputs" / "video.bin").read_bytes()
    assert lock["outputs"]["video.bin"]["sha256"] == out.results["save"].digest
    assert video == cache.store.get(out.results["save"].digest)
    events = [json.loads(line) for line in (arc / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("step.miss") == 6
    assert events[0]["event"] == "run.start" and events[-1]["event"] == "run.done"
    again = run_job(resolved, pipe, cache, opts)
    assert all(s["hit"] for s in again.lock["steps"].values())
    assert again.archive.name[-8:] == arc.name[-8:] and again.archive != arc
    assert open_archive(arc).outputs() == {"video.bin": arc / "outputs" / "video.bin"}


def test_interrupted_run_never_looks_complete(world, cache, opts, monkeypatch) -> None:
    resolved, pipe = world

    def boom(done: int) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(_fakes, "_maybe_stop", boom)
    with pytest.raises(RuntimeError):
        run_job(resolved, pipe, cache, opts)
    (info,) = list_runs(opts.runs_dir)
    assert not info.complete and not (info.path / COMPLETE_MARK).exists()
    with pytest.raises(ArchiveError, match="not a complete run archive: missing lock.toml, COMPLETE"):
        open_archive(info.path)


def test_bad_archives_are_refused(world, cache, opts, tmp_path) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        open_archive(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="missing recipe.toml, resolved.toml"):
        open_archive(tmp_path / "empty")
    arc = run_job(*world, cache, opts).archive
    lock = tomlkit.parse((arc / "lock.toml").read_text())
    lock["schema"] = 2
    (arc / "lock.toml").write_text(tomlkit.dumps(lock))
    with pytest.raises(ArchiveError, match="newer wanflow .*schema 2 > 1"):
        open_archive(arc)
    lock["schema"] = 1
    lock["outputs"] = {"../../escape.bin": {"step": "save", "sha256": "0"}}
    (arc / "lock.toml").write_text(tomlkit.dumps(lock))
    with pytest.raises(ArchiveError, match="unsafe output name '../../escape.bin'"):
        open_archive(arc)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", "C:/x", ""])
def test_safe_join_refuses_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ArchiveError):
        safe_join(tmp_path, bad)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_import_never_writes_outside_its_target(world, cache, opts, tmp_path) -> None:
    arc = run_job(*world, cache, opts).archive
    members = {f"{arc.name}/{p.relative_to(arc)}": p.read_bytes()
               for p in arc.rglob("*") if p.is_file()}
    good = import_archive(_tar(tmp_path / "good.tar", members), tmp_path / "imported")
    assert (good / "outputs" / "video.bin").read_bytes() == (arc / "outputs/video.bin").read_bytes()
    evil = _tar(tmp_path / "evil.tar", {**members, "../../evil.txt": b"x"})
    with pytest.raises(ArchiveError, match="unsafe archive member '../../evil.txt'"):
        import_archive(evil, tmp_path / "imported2")
    assert not (tmp_path / "evil.txt").exists() and not list(tmp_path.rglob("evil.txt"))


def test_sweep_shares_steps_and_writes_one_archive_per_job(world, cache, opts, counts) -> None:
    resolved, pipe = world
    sweep = attrs.evolve(resolved, sweep={"sampler.seed": [0, 1, 2, 3]})
    outcomes = run_recipe(sweep, lambda model: pipe, cache, opts)
    assert len(outcomes) == 4 and len({o.archive for o in outcomes}) == 4
    assert count(counts, "encode-text") == 2 and count(counts, "denoise") == 4
    assert len({o.results["save"].digest for o in outcomes}) == 4
    (index,) = (opts.runs_dir / "fake").glob("sweep-*.toml")
    jobs = tomlkit.parse(index.read_text()).unwrap()["jobs"]
    assert [j["job"] for j in jobs] == [f"sampler.seed={i}" for i in range(4)]
    assert [j["archive"] for j in jobs] == [o.archive.name for o in outcomes]
