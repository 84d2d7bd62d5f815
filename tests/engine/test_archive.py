from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import attrs
import pytest
import tomlkit

from wanflow.engine import run_job, run_recipe
from wanflow.engine.runner import run_key
from wanflow.engine.archive import (
    COMPLETE_MARK, import_archive, input_problems, list_runs, open_archive, portable_resolved, safe_join)
from wanflow.errors import ArchiveError

from . import _fakes
from .conftest import count


def test_archive_holds_recipe_lock_events_and_outputs(world, cache, opts) -> None:
    resolved, pipe = world
    out = run_job(resolved, pipe, cache, opts)
    arc = out.archive
    assert arc.parent == opts.runs_dir / "fake" and arc.name.endswith("-" + run_key(out.results)[:8])
    assert (arc / "recipe.toml").read_text() == resolved.text
    image = Path(resolved.values["inputs.image"])
    sha = cache.memo.digest(image)
    assert (arc / "resolved.toml").read_text() == resolved.canonical_toml().replace(
        f'"{image}"', f'"inputs/{sha}.png"')  # the input, by its place inside the archive
    assert (arc / "inputs" / f"{sha}.png").read_bytes() == image.read_bytes()
    lock = tomlkit.parse((arc / "lock.toml").read_text()).unwrap()
    assert lock["schema"] == 1 and lock["versions"]["torch"] == out.plan.env["torch"]
    assert lock["versions"]["imageio-ffmpeg"] != "absent"
    assert lock["runtime"] == {"device": "cpu", "cuda": "none"}
    assert lock["plugins"] == {"wanflow": "0.1.0"}
    dit = lock["weights"]["denoise/dit"]
    assert dit["source"] == "local:dit" and dit["sha256"] == cache.memo.digest(pipe.weights["dit"])
    assert lock["inputs"] == {"inputs.image": {"path": f"inputs/{sha}.png", "sha256": sha, "name": "image.png"}}
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


@attrs.frozen
class WithModelSource(_fakes.FakeResolved):
    """A recipe that also names a local weight file, as ``[models.dit].source`` does."""

    def input_files(self) -> dict[str, Path]:
        return {**super().input_files(), "models.dit.source": Path(self.values["models.dit.source"])}


def test_inputs_are_stored_once_by_content_and_weights_are_not(world, cache, opts, tmp_path) -> None:
    resolved, pipe = world
    (tmp_path / "end.PNG").write_bytes((tmp_path / "world" / "image.png").read_bytes())  # same bytes
    (tmp_path / "clip.mp4").write_bytes(b"a video")
    folder = tmp_path / "dataset"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.txt").write_text("one")
    values = {**resolved.values, "inputs.end_image": str(tmp_path / "end.PNG"),
              "inputs.video": str(tmp_path / "clip.mp4"), "inputs.dataset": str(folder),
              "models.dit.source": str(pipe.weights["dit"])}
    arc = run_job(WithModelSource(values), pipe, cache, opts).archive
    lock = tomlkit.parse((arc / "lock.toml").read_text()).unwrap()
    assert set(lock["inputs"]) == {"inputs.image", "inputs.end_image", "inputs.video", "inputs.dataset"}
    assert lock["inputs"]["inputs.image"]["path"] == lock["inputs"]["inputs.end_image"]["path"]
    assert lock["inputs"]["inputs.end_image"]["name"] == "end.PNG"
    stored = sorted(p.relative_to(arc / "inputs").as_posix() for p in (arc / "inputs").rglob("*") if p.is_file())
    assert len(stored) == 3 and stored[-1].endswith("/a/1.txt")  # one image, the video, the folder
    assert str(tmp_path) not in (arc / "resolved.toml").read_text().replace(str(pipe.weights["dit"]), "")
    assert input_problems(open_archive(arc)) == []
    (arc / lock["inputs"]["inputs.dataset"]["path"] / "a" / "1.txt").write_text("uno")
    (problem,) = input_problems(open_archive(arc))
    assert problem.startswith(f"input inputs.dataset: {lock['inputs']['inputs.dataset']['path']} has sha256 ")
    assert problem.endswith(f"the run used {lock['inputs']['inputs.dataset']['sha256'][:16]}…: the file was changed")


@attrs.frozen
class WithLora(_fakes.FakeResolved):
    """A recipe with a ``[[lora]]`` list, whose file paths sit inside the list value."""

    def input_files(self) -> dict[str, Path]:
        return {**super().input_files(), "lora.0.path": Path(self.values["lora"][0]["path"])}


def test_keys_see_input_files_by_content_not_by_where_they_lie(world, cache, tmp_path) -> None:
    from wanflow.engine.runner import keyed_values

    resolved, _ = world
    image = Path(resolved.values["inputs.image"])
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"lora weights")
    job = WithLora({**resolved.values, "lora": [{"path": str(lora), "scale": 0.8}]})
    values = keyed_values(job, cache.memo.digest)
    assert values["inputs.image"] == f"sha256:{cache.memo.digest(image)}"
    assert values["lora"] == [{"path": f"sha256:{cache.memo.digest(lora)}", "scale": 0.8}]
    assert job.values["lora"][0]["path"] == str(lora)  # the recipe's values are left alone
    elsewhere = shutil.copy(image, tmp_path / "copy.png")
    moved = keyed_values(attrs.evolve(job, values={**job.values, "inputs.image": str(elsewhere)}), cache.memo.digest)
    assert moved == values


def test_portable_resolved_rewrites_nested_and_listed_paths() -> None:
    from wanflow.engine.archive import ArchivedInput

    text = 'name = "x"\n\n[inputs]\nimage = "/abs/a.png"\n\n[[lora]]\npath = "/abs/l.safetensors"\nscale = 1.0\n'
    stored = {"inputs.image": ArchivedInput("inputs/aa.png", "aa", "a.png"),
              "lora.0.path": ArchivedInput("inputs/bb.safetensors", "bb", "l.safetensors")}
    doc = tomlkit.parse(portable_resolved(text, stored)).unwrap()
    assert doc == {"name": "x", "inputs": {"image": "inputs/aa.png"},
                   "lora": [{"path": "inputs/bb.safetensors", "scale": 1.0}]}


def test_import_refuses_an_archive_whose_input_was_changed(world, cache, opts, tmp_path) -> None:
    arc = run_job(*world, cache, opts).archive
    members = {f"{arc.name}/{p.relative_to(arc).as_posix()}": p.read_bytes() for p in arc.rglob("*") if p.is_file()}
    (image,) = [m for m in members if "/inputs/" in m]
    with pytest.raises(ArchiveError, match=r"not whole: input inputs.image: inputs/\w+\.png has sha256 .* "
                                           "the file was changed"):
        import_archive(_tar(tmp_path / "bad.tar", {**members, image: b"other pixels"}), tmp_path / "imported")
    missing = {m: b for m, b in members.items() if m != image}
    with pytest.raises(ArchiveError, match=r"input inputs.image: inputs/\w+\.png is missing"):
        import_archive(_tar(tmp_path / "short.tar", missing), tmp_path / "imported")
    assert not (tmp_path / "imported" / "fake").exists()


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
