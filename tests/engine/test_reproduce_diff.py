from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest

from wanflow.engine import run_job
from wanflow.engine.diff import DiffReport, diff_values, invalidated, render_md, render_text
from wanflow.engine.lock import lock_differences
from wanflow.engine.reproduce import reproduce
from wanflow.errors import ArchiveError

from . import _fakes
from ._fakes import FakePipeline
from .conftest import count


def load_text(text: str, path: Path) -> _fakes.FakeResolved:
    """The fake loader, resolving relative input paths against the file's folder as recipes do."""
    r = _fakes.load_text(text, path)
    values = {k: str(path.parent / v) if k.startswith("inputs.") and v and not Path(v).is_absolute() else v
              for k, v in r.values.items()}
    return attrs.evolve(r, values=values)


def runs_of(opts) -> list[Path]:
    return sorted((opts.runs_dir / "fake").iterdir())


def test_reproduce_recomputes_and_is_bit_identical_for_a_deterministic_pipeline(world, cache, opts, counts) -> None:
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    rep = reproduce(arc, load_text, lambda m: pipe, cache, opts)
    assert rep.identical and rep.lock_diffs == () and rep.steps == ()
    assert [(o.name, o.identical) for o in rep.outputs] == [("video.bin", True)]
    assert count(counts, "denoise") == 2 and (rep.computed, rep.total) == (6, 6)  # recomputed by default
    assert rep.lines()[0] == "video.bin: bit-identical"
    assert rep.lines()[-1] == f"6 of 6 steps recomputed; reproduction archived at {rep.archive}"
    cached = reproduce(arc, load_text, lambda m: pipe, cache, opts, use_cache=True)
    assert cached.identical and cached.computed == 0 and count(counts, "denoise") == 2


def test_an_archive_moved_away_from_its_inputs_and_weights_reproduces(world, cache, opts, tmp_path) -> None:
    """Another machine: the original image is gone, the weights lie elsewhere (same bytes)."""
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    moved = shutil.copytree(arc, tmp_path / "elsewhere" / arc.name)
    Path(resolved.values["inputs.image"]).unlink()
    weights = {k: shutil.copy(p, tmp_path / f"{k}.bin") for k, p in pipe.weights.items()}
    rep = reproduce(moved, load_text, lambda m: FakePipeline({k: Path(p) for k, p in weights.items()}), cache, opts)
    assert rep.identical and rep.lock_diffs == ()


def test_a_changed_weight_is_named_before_anything_runs(world, cache, opts, counts) -> None:
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    pipe.weights["dit"].write_bytes(b"retrained dit")
    with pytest.raises(ArchiveError, match=r"(?s)nothing was computed.*weight denoise/dit: .*dit.safetensors has "
                                           r"sha256 \w+…, the run used \w+… \(local:dit at revision \)"):
        reproduce(arc, load_text, lambda m: pipe, cache, opts)
    assert count(counts, "denoise") == 1 and runs_of(opts) == [arc]
    rep = reproduce(arc, load_text, lambda m: pipe, cache, opts, allow_changes=True)
    assert not rep.identical
    entries = {k for k, _, _ in rep.lock_diffs}
    assert entries == {"weights.denoise/dit.sha256"}
    assert rep.steps == (("denoise", ("key", "output")), ("decode", ("key", "output")), ("save", ("key", "output")))
    assert "steps that differ: denoise (key, output), decode (key, output), save (key, output)" in rep.lines()
    assert any("DIFFERS" in line for line in rep.lines())


@pytest.mark.parametrize("change", ["edit", "delete"])
def test_a_changed_or_missing_input_is_named_before_anything_runs(world, cache, opts, counts, change) -> None:
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    (stored,) = (arc / "inputs").iterdir()
    stored.write_bytes(b"IMG1") if change == "edit" else stored.unlink()
    what = "has sha256 .* the file was changed" if change == "edit" else "is missing"
    refusal = rf"(?s)nothing was computed.*input inputs.image: inputs/{stored.name} {what}"
    with pytest.raises(ArchiveError, match=refusal):
        reproduce(arc, load_text, lambda m: pipe, cache, opts, allow_changes=True)
    assert sum(count(counts, k) for k in ("encode-text", "encode-conditioning", "denoise", "decode", "save")) == 6
    assert runs_of(opts) == [arc]


def test_an_output_that_differs_names_the_first_step_and_is_described(world, cache, opts, monkeypatch) -> None:
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    monkeypatch.setattr(_fakes.Decode, "run", lambda self, ctx: b"other pixels")  # not deterministic
    seen: list[Any] = []

    def describe(old: Path, new: Path) -> str:
        seen.append((old.read_bytes(), new.read_bytes()))
        return "frames differ (max abs diff 3, first differing frame 0 of 1)"

    rep = reproduce(arc, load_text, lambda m: pipe, cache, opts, describe=describe)
    assert rep.steps == (("decode", ("output",)), ("save", ("key", "output")))
    old, new = arc / "outputs" / "video.bin", rep.archive / "outputs" / "video.bin"
    assert seen == [(old.read_bytes(), new.read_bytes())]
    lines = rep.lines()
    assert lines[0].startswith("video.bin: DIFFERS (sha256 ") and lines[0].endswith(
        "): frames differ (max abs diff 3, first differing frame 0 of 1)")
    assert lines[1:3] == ["steps that differ: decode (output), save (key, output)",
                          "  first: decode: same key, other output: it is not deterministic here"]
    assert "no lock entry differs: a step is not deterministic here" in lines


def test_the_report_says_whether_a_setting_or_the_machine_is_to_blame(tmp_path) -> None:
    from wanflow.engine.reproduce import OutputCheck, ReproReport

    out = (OutputCheck("video.mp4", "a" * 64, "b" * 64),)
    setting = ReproReport(tmp_path, out, (), (("save", ("key", "output")),), 1, 8).lines()
    assert setting[1:3] == ["steps that differ: save (key, output)",
                            "  first: save: its key differs: a setting, input, weight or version changed"]
    assert setting[3].startswith("no lock entry differs: a setting differs (compare the two archives")
    machine = ReproReport(tmp_path, out, (), (("denoise", ("output",)), ("decode", ("key", "output"))), 8, 8).lines()
    assert machine[3] == "no lock entry differs: a step is not deterministic here"
    versions = ReproReport(tmp_path, out, (("versions.torch", "2.12", "2.13"),), (("denoise", ("key", "output")),))
    assert versions.lines()[3:5] == ["lock entries that differ:", '  versions.torch: "2.12" → "2.13"']


def test_diff_lists_changes_and_the_steps_they_invalidate(world) -> None:
    resolved, pipe = world
    specs = pipe.steps(resolved)
    b = {**resolved.values, "sampler.cfg": 6.0, "vae.tiled": False, "memory.policy": "offload"}
    changes = {c.key: c for c in diff_values(resolved.values, b, specs)}
    assert set(changes) == {"sampler.cfg", "vae.tiled", "memory.policy"}
    assert changes["sampler.cfg"].invalidates == ("denoise", "decode", "save")
    assert changes["vae.tiled"].invalidates == ("decode", "save")
    assert changes["memory.policy"].invalidates == ()
    assert invalidated(specs, "prompt.negative") == ("encode-text:negative", "denoise", "decode", "save")
    rep = DiffReport("a.toml", "b.toml", tuple(changes.values()))
    text = render_text(rep)
    assert "[sampler].cfg: 5.0 → 6.0   re-runs: denoise, decode, save" in text
    assert "[memory].policy: \"auto\" → \"offload\"   re-runs: no step" in text
    md = render_md(rep)
    assert "| `[vae].tiled` | `true` | `false` | `decode`, `save` |" in md


def test_lock_differences_between_two_archives(world, cache, opts) -> None:
    resolved, pipe = world
    a = run_job(resolved, pipe, cache, opts).lock
    resolved_img = resolved.values["inputs.image"]
    open(resolved_img, "wb").write(b"new image")
    b = run_job(resolved, pipe, cache, opts).lock
    assert a["inputs"]["inputs.image"]["path"] != b["inputs"]["inputs.image"]["path"]  # stored by content
    diffs = lock_differences(a, b)
    assert [k for k, _, _ in diffs] == ["inputs.inputs.image.sha256"]
    moved = {**b, "weights": {k: {**w, "path": f"/elsewhere/{k}", "revision": "0" * 40}
                              for k, w in b["weights"].items()}}
    assert lock_differences(b, moved) == []  # where a weight lies, or its commit name, is no difference


def test_a_changed_input_file_re_runs_the_steps_that_read_it_by_role(world) -> None:
    """Input files are read by role (``StepSpec.files``), not as params: a changed path still
    invalidates the encode that reads it and everything after it."""
    resolved, pipe = world
    specs = list(pipe.steps(resolved))
    first = specs[0]
    specs[0] = attrs.evolve(first, files={"image": Path("/in/b.png")})
    changes = diff_values({**resolved.values, "inputs.image": "/in/a.png"},
                          {**resolved.values, "inputs.image": "/in/b.png"}, specs)
    (change,) = changes
    downstream = invalidated(specs, first.name + "-never-read", files=frozenset({"/in/b.png"}))
    assert first.name in change.invalidates and change.invalidates == downstream
    assert len(change.invalidates) > 1  # and what reads its output
    untouched = diff_values({**resolved.values, "inputs.image": "/in/a.png"},
                            {**resolved.values, "inputs.image": "/in/c.png"}, specs)[0]
    assert first.name not in untouched.invalidates
    compared_by_content = invalidated(specs, "inputs.image", digest=lambda p: f"of-{p.name}",
                                      files=frozenset({"sha256:of-a.png", "sha256:of-b.png"}))
    assert compared_by_content == downstream  # `wanflow diff` compares input files by their digests
