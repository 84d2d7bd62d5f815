from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from wanflow.engine import Executor, Session, explain
from wanflow.engine.runner import plan_job

from . import _fakes
from ._fakes import BASE_VALUES
from .conftest import count

ENC_POS, ENC_NEG, COND = "encode-text:positive", "encode-text:negative", "encode-conditioning"
TAIL = {"denoise", "decode", "save"}

# Every field of the fake recipe → exactly the steps a change of it must re-run.
EXPECTED_MISSES: dict[str, set[str]] = {
    "prompt.text": {ENC_POS} | TAIL, "prompt.negative": {ENC_NEG} | TAIL,
    "video.height": {COND} | TAIL, "video.width": {COND} | TAIL,
    "video.frames": TAIL, "video.fps": TAIL,  # denoise reads video.*
    **{k: TAIL for k in BASE_VALUES if k.startswith("sampler.")},
    "dit.dtype": TAIL, "dit.fp8": TAIL, "dit.attention": TAIL,
    "text_encoder.dtype": {ENC_POS, ENC_NEG} | TAIL,
    "vae.tiled": {"decode", "save"}, "vae.tile_size": {"decode", "save"},
    "vae.tile_stride": {"decode", "save"}, "output.format": {"save"},
    "memory.policy": set(), "memory.limit_gb": set(), "progress.bar": set(), "log.format": set(),
}


def _changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [v + 2 for v in value]
    return f"{value} changed"


def _run(resolved, pipe, cache, session=None):
    return Executor(plan_job(resolved, pipe, cache), cache, session=session).run()


def test_each_field_misses_exactly_the_steps_that_read_it(world, cache) -> None:
    resolved, pipe = world
    assert set(EXPECTED_MISSES) == set(BASE_VALUES)  # the table covers every field
    first = _run(resolved, pipe, cache)
    assert not any(r.hit for r in first.values())
    for key, expected in EXPECTED_MISSES.items():
        changed = attrs.evolve(resolved, values={**resolved.values, key: _changed(resolved.values[key])})
        misses = {n for n, r in _run(changed, pipe, cache).items() if not r.hit}
        assert misses == expected, key
    assert all(r.hit for r in _run(resolved, pipe, cache).values())


def test_input_file_and_weight_changes_rekey_their_consumers(world, cache, tmp_path) -> None:
    resolved, pipe = world
    _run(resolved, pipe, cache)
    img = Path(resolved.values["inputs.image"])
    img.write_bytes(b"another image")
    assert {n for n, r in _run(resolved, pipe, cache).items() if not r.hit} == {COND} | TAIL
    pipe.weights["vae"].write_bytes(b"new vae weights")
    assert {n for n, r in _run(resolved, pipe, cache).items() if not r.hit} == {"decode", "save"}


def test_early_cutoff_identical_embedding_does_not_rerun_denoise(world, cache, counts) -> None:
    resolved, pipe = world
    _run(resolved, pipe, cache)
    spaced = attrs.evolve(resolved, values={**resolved.values, "prompt.text": "a  puppy on grass "})
    res = _run(spaced, pipe, cache)
    assert not res[ENC_POS].hit and res[ENC_POS].digest == _run(resolved, pipe, cache)[ENC_POS].digest
    assert res["denoise"].hit and res["save"].hit
    assert count(counts, "denoise") == 1


def test_explain_names_the_dotted_key_and_values(world, cache) -> None:
    resolved, pipe = world
    before = {e.node: e for e in explain(plan_job(resolved, pipe, cache), cache)}
    assert {e.reasons for e in before.values() if e.node != "denoise"} <= {
        ("never run",), ("upstream `denoise` runs first", "never run"),
        ("upstream `decode` runs first", "never run")}
    _run(resolved, pipe, cache)
    cfg6 = attrs.evolve(resolved, values={**resolved.values, "sampler.cfg": 6.0})
    got = {e.node: e for e in explain(plan_job(cfg6, pipe, cache), cache)}
    assert [got[n].status for n in (ENC_POS, ENC_NEG, COND)] == ["hit"] * 3
    assert got["denoise"].reasons == ("[sampler].cfg 5.0 → 6.0",)
    assert got["denoise"].line().endswith("miss because [sampler].cfg 5.0 → 6.0")
    assert got["decode"].reasons == ("upstream `denoise` runs first",)
    Path(resolved.values["inputs.image"]).write_bytes(b"changed")
    got = {e.node: e for e in explain(plan_job(resolved, pipe, cache), cache)}
    assert got[COND].status == "miss" and got[COND].reasons[0].startswith("input file `image` changed")


def test_explain_after_run_predicts_the_run(world, cache) -> None:
    resolved, pipe = world
    _run(resolved, pipe, cache)
    seed = attrs.evolve(resolved, values={**resolved.values, "sampler.seed": 7})
    predicted = {e.node: e.status for e in explain(plan_job(seed, pipe, cache), cache)}
    actual = {n: "hit" if r.hit else "miss" for n, r in _run(seed, pipe, cache).items()}
    assert predicted == actual


def test_checkpointed_step_resumes_with_identical_result(world, cache, counts, monkeypatch) -> None:
    resolved, pipe = world
    with_steps = attrs.evolve(resolved, values={**resolved.values, "sampler.steps": 8})
    reference = _run(with_steps, pipe, cache)["denoise"].digest
    cache.clear()

    def boom(done: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(_fakes, "_maybe_stop", boom)
    with pytest.raises(KeyboardInterrupt):
        _run(with_steps, pipe, cache)
    monkeypatch.setattr(_fakes, "_maybe_stop", lambda done: None)
    assert _run(with_steps, pipe, cache)["denoise"].digest == reference
    assert (counts / "log.txt").read_text().splitlines()[-1] == "denoise.start 5"
    assert not list(cache.index.items("partial"))  # finished: the partial state is gone


def test_no_cache_recomputes_but_shares_within_a_session(world, cache, counts) -> None:
    resolved, pipe = world
    _run(resolved, pipe, cache)
    session = Session(no_cache=True)
    assert not any(r.hit for r in _run(resolved, pipe, cache, session).values())
    assert all(r.hit for r in _run(resolved, pipe, cache, session).values())
    assert count(counts, "denoise") == 2


def test_corrupt_object_is_a_miss_and_is_recomputed(world, cache, counts) -> None:
    resolved, pipe = world
    first = _run(resolved, pipe, cache)
    obj = cache.store.path(first["denoise"].digest)
    obj.write_bytes(obj.read_bytes()[:-1] + b"\x00")
    ex = Executor(plan_job(resolved, pipe, cache), cache)
    res = ex.run()
    assert res["save"].hit  # nothing needed denoise's bytes
    cache.index.forget(res["decode"].key)  # decode must now re-run and read denoise
    ex2 = Executor(plan_job(resolved, pipe, cache), cache)
    ex2.run()
    assert count(counts, "denoise") == 2
    assert cache.store.get(first["denoise"].digest)  # rewritten, verified
    assert [e["event"] for e in ex2.events.events].count("step.corrupt") == 1


def test_tensor_outputs_and_tensor_checkpoints_round_trip(cache) -> None:
    torch = pytest.importorskip("torch")
    from wanflow.engine import StepSpec, plan

    @attrs.frozen
    class Latents:
        kind: str = "latents"
        version: int = 1
        reads: tuple[str, ...] = ("n",)
        output: str = "tensors"

        def run(self, ctx):
            assert ctx.load_partial() is None
            x = torch.arange(ctx.params["n"], dtype=torch.float32)
            ctx.save_partial(1, {"x": x * 0})
            _, state = ctx.load_partial()
            return {"x": x, "zero": state["x"]}

    @attrs.frozen
    class Total:
        kind: str = "total"
        version: int = 1
        reads: tuple[str, ...] = ()
        output: str = "bytes"

        def run(self, ctx):
            t = ctx.input("lat")
            return repr((t["x"].sum().item(), t["zero"].abs().sum().item(), t["x"].dtype)).encode()

    specs = [StepSpec("lat", Latents()), StepSpec("total", Total(), inputs={"lat": "lat"})]
    p = plan({"n": 5}, specs, "t", cache.memo.digest)
    ex = Executor(p, cache)
    res = ex.run()
    assert cache.store.get(res["total"].digest) == b"(10.0, 0.0, torch.float32)"
    assert torch.equal(ex.load("lat")["x"], torch.arange(5, dtype=torch.float32))
    resumed = [e for e in ex.events.events if e["event"] == "step.resume"]
    assert [e["done"] for e in resumed] == [1]


def test_long_steps_drive_the_progress_bar_and_events_reach_the_callback(world, cache) -> None:
    from wanflow.engine.events import Bars, EventLog

    bars: list[dict] = []

    class RecordingBars(Bars):
        def __call__(self, total, desc="", unit="it"):
            bar = super().__call__(total, desc, unit)
            rec = {"desc": desc, "total": total, "n": 0}
            bars.append(rec)
            real_update = bar.update
            bar.update = lambda n=1: (rec.__setitem__("n", rec["n"] + n), real_update(n))
            return bar

    resolved, pipe = world
    seen: list[str] = []
    ex = Executor(plan_job(resolved, pipe, cache), cache,
                  EventLog(lambda e: seen.append(e["event"])), RecordingBars(quiet=False))
    ex.run()
    assert bars == [{"desc": "denoise", "total": 6, "n": 6}]  # the step drove it to the end
    assert seen.count("step.miss") == 6 and seen.count("step.done") == 6
