from __future__ import annotations

import attrs

from wanflow.engine import run_job
from wanflow.engine.diff import DiffReport, diff_values, invalidated, render_md, render_text
from wanflow.engine.lock import lock_differences
from wanflow.engine.reproduce import reproduce

from ._fakes import load_text
from .conftest import count


def test_reproduce_is_bit_identical_for_a_deterministic_pipeline(world, cache, opts, counts) -> None:
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    rep = reproduce(arc, load_text, lambda m: pipe, cache, attrs.evolve(opts, no_cache=True))
    assert rep.identical and rep.lock_diffs == ()
    assert [(o.name, o.identical) for o in rep.outputs] == [("video.bin", True)]
    assert count(counts, "denoise") == 2  # --no-cache really recomputed
    assert rep.lines()[0] == "video.bin: bit-identical"


def test_reproduce_reports_which_weight_changed(world, cache, opts) -> None:
    resolved, pipe = world
    arc = run_job(resolved, pipe, cache, opts).archive
    pipe.weights["dit"].write_bytes(b"retrained dit")
    rep = reproduce(arc, load_text, lambda m: pipe, cache, opts)
    assert not rep.identical
    entries = {k for k, _, _ in rep.lock_diffs}
    assert "weights.denoise/dit.sha256" in entries
    assert {"steps.denoise.key", "steps.decode.key", "steps.save.key"} <= entries
    assert not any(k.startswith(("weights.decode", "inputs.", "versions.")) for k in entries)
    assert any("DIFFERS" in line for line in rep.lines())


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
    diffs = lock_differences(a, b)
    assert [k for k, _, _ in diffs] == ["inputs.inputs.image.sha256"]
