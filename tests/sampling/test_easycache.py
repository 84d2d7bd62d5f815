"""EasyCache: its decisions on synthetic inputs and outputs (by hand and against a transcription
of EasyCache4Wan2.1's forward), what a skipped call returns, and the real denoise step."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

from tests.e2e._layout import tiny, write_dit
from tests.e2e.test_key_identity import planned, static_keys
from tests.e2e.test_step_cache_runs import quick
from tests.sampling.conftest import ToyModel
from tests.steps._ctx import Ctx, Stop
from tests.steps.test_denoise import PARAMS, T2V, texts, weights
from wanflow.errors import ModelInputError, RecipeError
from wanflow.recipe import load_recipe
from wanflow.sampling.easycache import EasyCache, EasyCacheRule
from wanflow.sampling.step_cache import StepCache, TeaCacheRule
from wanflow.sampling.step_cache_settings import StepCacheSettings, make_step_cache
from wanflow.steps import denoise

STEPS = 10
TIMESTEPS = [float(t) for t in torch.linspace(999, 99, STEPS).round()]


class Sig(NamedTuple):
    e: torch.Tensor = torch.zeros(1)
    e0: torch.Tensor = torch.zeros(1)
    first_residual: torch.Tensor | None = None


def call(cache: EasyCache, step: int, branch: str, x: torch.Tensor, model) -> tuple[torch.Tensor, bool]:
    """One DiT call as ``cached_forward`` makes it: (output, whether the model ran)."""
    assert cache.step_for(branch, torch.tensor([TIMESTEPS[step]])) == step
    reused = cache.reused_output(step, branch, x)
    if reused is not None:
        return reused, False
    assert cache.decide(step, branch, Sig()) is True
    y = model(x, step)
    cache.finish(step, branch, None, y)
    return y, True


def drive(cache: EasyCache, xs: list[torch.Tensor], models: dict, steps=range(STEPS)) -> dict[str, list]:
    """Every branch of ``models`` at each step, in the order guidance calls them; the outputs."""
    out: dict[str, list] = {branch: [] for branch in models}
    for step in steps:
        for branch, model in models.items():
            out[branch].append(call(cache, step, branch, xs[step], model)[0])
    return out


def easycache(threshold: float, retention: float = 0.2) -> EasyCache:
    return EasyCache(EasyCacheRule(threshold, retention), TIMESTEPS)


def linear(x: torch.Tensor, step: int) -> torch.Tensor:
    return 10.0 + 2.0 * x


def ramp() -> list[torch.Tensor]:
    return [torch.full((1, 2, 3), float(s)) for s in range(STEPS)]


def test_decisions_worked_by_hand():
    """x_s = s everywhere and y = 10 + 2x: k = 2, and each step adds 2·1/mean|y_c|.

    Steps 0, 1 are retained (0.2 of 10). From c = 1 (y = 12): 1/6, 2/6 < 0.4, 3/6 ≥ 0.4, so step
    4 computes; from c = 4 (y = 18): 1/9, 2/9, 3/9 < 0.4, 4/9 ≥ 0.4, so step 8; 9 is the last."""
    cache = easycache(0.4)
    drive(cache, ramp(), {"cond": linear})
    assert cache.computed_steps("cond") == (0, 1, 4, 8, 9)
    assert cache.tracks["cond"].k == 2.0


def reference(xs: list[torch.Tensor], model, threshold: float, retention: float) -> list[int]:
    """EasyCache4Wan2.1's conditional path transcribed (float64): the steps it computes."""
    retained, last = math.floor(len(xs) * retention), len(xs) - 1
    acc, k, before, y_prev, x_computed, computed = 0.0, None, None, None, None, []
    for s, x in enumerate(xs):
        x = x.double()
        if s < retained or s == last:
            calc, acc = True, 0.0
        elif before is not None and y_prev is not None and k is not None:
            acc += k * (x - before).abs().mean().item() / y_prev.abs().mean().item()
            calc = acc >= threshold
            acc = 0.0 if calc else acc
        else:
            calc = True
        before = x
        if calc:
            y = model(x.float(), s).double()
            if y_prev is not None:
                k = (y - y_prev).abs().mean().item() / (x - x_computed).abs().mean().item()
            x_computed, y_prev = x, y
            computed.append(s)
    return computed


def drifting(seed: int, steps: int = STEPS) -> list[torch.Tensor]:
    """Latents moving by a random 1–15 % per step, like a sampler's."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(1, 4, 3, 4, 5, generator=g)]
    for _ in range(steps - 1):
        rate = 0.01 + 0.14 * torch.rand((), generator=g)
        step = torch.randn(xs[-1].shape, generator=g)
        xs.append(xs[-1] + rate * xs[-1].abs().mean() * step / step.abs().mean())
    return xs


def toy(seed: int):
    model = ToyModel(seed)
    return lambda x, step: model(x, torch.tensor(TIMESTEPS[step]))


@pytest.mark.parametrize(("seed", "threshold", "retention"), [(0, 0.3, 0.2), (1, 0.5, 0.0), (2, 0.8, 0.3)])
def test_decisions_follow_the_published_rule(seed, threshold, retention):
    xs, model = drifting(seed), toy(seed)
    cache = easycache(threshold, retention)
    drive(cache, xs, {"cond": model})
    expected = reference(xs, model, threshold, retention)
    assert cache.computed_steps("cond") == tuple(expected)
    assert 3 <= len(expected) <= STEPS - 3  # the rule really skipped, and really computed


@pytest.mark.parametrize(("retention", "expected"), [(0.0, (0, 1, 9)), (0.2, (0, 1, 9)), (0.4, (0, 1, 2, 3, 9))])
def test_retained_first_steps_and_the_last_step_always_compute(retention, expected):
    """With any threshold: the first floor(retention·steps) steps, two steps to measure k, the last."""
    cache = easycache(1e9, retention)
    drive(cache, drifting(3), {"cond": toy(3)})
    assert cache.computed_steps("cond") == expected


def test_threshold_zero_never_skips_even_where_the_input_stands_still():
    xs = ramp()[:3] + [ramp()[2]] * (STEPS - 3)  # from step 3 on, the predicted change is 0
    cache = easycache(0.0, retention=0.0)
    drive(cache, xs, {"cond": linear, "uncond": linear})
    assert cache.computed_steps("cond") == cache.computed_steps("uncond") == tuple(range(STEPS))


def test_a_skipped_call_returns_its_input_plus_the_last_computed_vector():
    """Each branch adds its own y_c − x_c to the current input; the unconditional pass follows the
    conditional decision although its own outputs differ."""
    xs, models = drifting(4), {"cond": toy(4), "uncond": toy(5)}
    cache = easycache(0.3)
    last: dict[str, tuple] = {}
    skipped = 0
    for step in range(STEPS):
        for branch, model in models.items():
            out, ran = call(cache, step, branch, xs[step], model)
            if ran:
                last[branch] = (xs[step], out)
                assert torch.equal(out, model(xs[step], step))
            else:
                x_c, y_c = last[branch]
                assert torch.equal(out, xs[step] + (y_c - x_c))
                skipped += 1
    assert skipped >= 4
    assert cache.computed_steps("uncond") == cache.computed_steps("cond")


def test_the_unconditional_pass_cannot_run_before_the_conditional_decision():
    cache = easycache(0.3)
    with pytest.raises(ModelInputError, match="conditional pass"):
        call(cache, 0, "uncond", ramp()[0], linear)


def test_a_batched_pair_decides_from_its_conditional_rows():
    xs, cond, far = drifting(6), toy(6), toy(7)

    def uncond(x, s):  # offset: were the pair measured on all its rows, it would damp the predictions
        return far(x, s) + 20.0

    def both(x, s):
        return torch.cat([cond(x[:1], s), uncond(x[1:], s)])

    two = easycache(0.3)
    separate = drive(two, xs, {"cond": cond, "uncond": uncond})
    pair = easycache(0.3)
    batched = drive(pair, [torch.cat([x, x]) for x in xs], {"pair": both})
    assert pair.computed_steps("pair") == two.computed_steps("cond")
    assert len(two.computed_steps("cond")) < STEPS
    for s in range(STEPS):
        torch.testing.assert_close(batched["pair"][s], torch.cat([separate["cond"][s], separate["uncond"][s]]))


def test_state_tensors_resume_the_same_decisions_and_outputs():
    xs, models = drifting(8), {"cond": toy(8), "uncond": toy(9)}
    whole = easycache(0.3)
    want = drive(whole, xs, models)
    split = next(s for s in range(STEPS) if s not in whole.computed_steps("cond"))  # resume into a skip
    first = easycache(0.3)
    done = drive(first, xs, models, range(split))
    saved = {k: v.clone() for k, v in first.state_tensors().items()}
    assert {"cond.easy", "cond.before", "cond.x_done", "cond.y_done", "uncond.easy"} <= set(saved)
    resumed = easycache(0.3)
    resumed.load_state_tensors(saved)
    rest = drive(resumed, xs, models, range(split, STEPS))
    assert resumed.computed_steps("cond") == whole.computed_steps("cond")
    assert len(whole.computed_steps("cond")) < STEPS
    for branch in models:
        assert all(torch.equal(a, b) for a, b in zip(done[branch] + rest[branch], want[branch], strict=True))


def test_a_state_restored_from_a_checkpoint_moves_to_the_compute_device():
    """Checkpoints come back on the CPU; the next call's device ("meta" stands in for a GPU) wins."""
    xs, models = drifting(10), {"cond": toy(10), "uncond": toy(11)}
    cache = easycache(1e9)
    drive(cache, xs, models, range(4))
    assert not call(cache, 4, "cond", xs[4], models["cond"])[1]  # skipped: uncond follows
    restored = easycache(1e9)
    restored.load_state_tensors(cache.state_tensors())
    out, ran = call(restored, 4, "uncond", xs[4].to("meta"), models["uncond"])
    assert not ran and out.device.type == "meta"
    teacache = StepCache(TeaCacheRule((1.0, 0.0), 0.1), TIMESTEPS)
    teacache.load_state_tensors({"cond.scalars": torch.zeros(5, dtype=torch.float64),
                                 "cond.computed": torch.zeros(0, dtype=torch.int64),
                                 "cond.residual": torch.ones(1, 2, 3)})
    assert teacache.decide(0, "cond", Sig(torch.zeros(1, device="meta"), torch.zeros(1, device="meta")))
    assert teacache.cached_residual("cond").device.type == "meta"


def test_settings_make_an_easycache_and_refuse_what_it_does_not_read():
    cache = make_step_cache(StepCacheSettings("easycache", 0.1, retention=0.3), TIMESTEPS)
    assert isinstance(cache, EasyCache) and cache.rule == EasyCacheRule(0.1, 0.3)
    for settings, key in [(StepCacheSettings("easycache", None, 2.0), "target_speedup"),
                          (StepCacheSettings("easycache", 0.1, max_skips=3), "max_skips"),
                          (StepCacheSettings("easycache", 0.1, mode="e0"), "mode"),
                          (StepCacheSettings("easycache", 0.1, ratios=(("cond", (1.0,)),)), "ratios"),
                          (StepCacheSettings("easycache", -0.1), "threshold")]:
        with pytest.raises(ModelInputError, match=rf"\[sampler.cache\]\.{key}"):
            settings.check()


# ------------------------------------------------------------------ recipes and the denoise step


@pytest.mark.parametrize(("cache", "key", "message"), [
    ({"threshold": 0.1, "max_skips": 4}, "max_skips", "no cap on consecutive skips"),
    ({"threshold": 0.1, "mode": '"e0"'}, "mode", "remove it"),
    ({"threshold": 0.1, "ratios_cond": "[1.0, 0.9]"}, "ratios_cond", "needs no calibration"),
    ({"threshold": 0.1, "coefficients": '"calibrated"', "calibrated": "[1.0, 0.0]"}, "coefficients", "remove it"),
    ({"threshold": -0.1}, "threshold", "≥ 0"),
    ({"threshold": "nan"}, "threshold", "≥ 0"),
])
def test_recipes_with_settings_easycache_cannot_honour_are_refused(tmp_path, cache, key, message):
    with pytest.raises(RecipeError, match=rf"\[sampler\.cache\]\.{key} = .*{message}"):
        load_recipe(quick(tmp_path, {"method": '"easycache"', **cache}))


def test_the_denoise_key_changes_with_every_easycache_setting(tmp_path):
    def key(**cache):
        return static_keys(planned(quick(tmp_path, cache or None)))["denoise"]

    keys = [key(), key(method='"easycache"', threshold=0.1), key(method='"easycache"', threshold=0.2),
            key(method='"easycache"', threshold=0.1, retention=0.4), key(method='"first-block"', threshold=0.1)]
    assert len(set(keys)) == len(keys)


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    write_dit(folder, tiny.tiny_dit_config("t2v", 16, 16), 1, shards=1)
    return weights("dit", folder)


def easy(threshold: float) -> dict:
    return {"sampler.steps": 10, "sampler.cache.method": "easycache", "sampler.cache.threshold": threshold}


def test_through_the_denoise_step_threshold_zero_is_the_plain_run_and_a_skipping_one_resumes(dit, monkeypatch):
    from wanflow.models import dit_cache

    plain = T2V.run(Ctx({**PARAMS, "sampler.steps": 10}, texts(), dit))["latents"]
    assert torch.equal(T2V.run(Ctx({**PARAMS, **easy(0.0)}, texts(), dit))["latents"], plain)
    calls = []
    real = dit_cache.embed_inputs
    monkeypatch.setattr(dit_cache, "embed_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    cached = T2V.run(Ctx({**PARAMS, **easy(1.0)}, texts(), dit))["latents"]
    assert 4 <= len(calls) < 2 * 10 and not torch.equal(cached, plain)  # whole calls skipped
    monkeypatch.setattr(denoise, "CHECKPOINT_EVERY", 2)
    killed = Ctx({**PARAMS, **easy(1.0)}, texts(), dit, stop_after=4)  # this DiT skips steps 2 and 4
    with pytest.raises(Stop):
        T2V.run(killed)
    assert any(k.endswith(".easy") for k in killed.partial[1])
    resumed = T2V.run(Ctx({**PARAMS, **easy(1.0)}, texts(), dit, partial=killed.partial))["latents"]
    assert torch.equal(resumed, cached)
