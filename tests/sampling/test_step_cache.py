"""Step-cache decisions on synthetic signals: each rule against an independent recomputation."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch

from wanflow.errors import ModelInputError
from wanflow.sampling.step_cache import (
    FirstBlockRule,
    MagCacheRule,
    StepCache,
    TeaCacheRule,
)
from wanflow.sampling.step_cache_settings import StepCacheSettings, make_step_cache
from wanflow.sampling.teacache import (
    TEACACHE_COEFFICIENTS,
    DitArchitecture,
    solve_threshold,
    teacache_plan,
    teacache_set,
)

STEPS = 30
T13_E = TEACACHE_COEFFICIENTS[("wan2.1-t2v-1.3b", "e")]
TIMESTEPS = [float(t) for t in torch.linspace(999, 20, STEPS).round()]


class Sig(NamedTuple):
    e: torch.Tensor
    e0: torch.Tensor
    first_residual: torch.Tensor | None = None


def drifting(seed: int, steps: int = STEPS, low: float = 0.01, high: float = 0.12) -> list[torch.Tensor]:
    """Tensors whose relative change per step lies in [low, high] (real Wan embeddings: ~0.01–0.1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 1, 16, generator=g) + 3.0
    out = [x]
    for _ in range(steps - 1):
        rate = low + (high - low) * torch.rand((), generator=g)
        noise = torch.randn(1, 1, 16, generator=g)
        out.append(out[-1] + rate * out[-1].abs().mean() * noise / noise.abs().mean())
    return out


def signals(seed: int = 0) -> list[Sig]:
    es, e0s = drifting(seed), drifting(seed + 100)
    return [Sig(e, e0) for e, e0 in zip(es, e0s)]


def reference_teacache(sigs, coefficients, threshold, mode, steps=STEPS) -> list[int]:
    """TeaCache4Wan2.1's forward, per branch: ret_steps/cutoff_steps over calls, np.poly1d, acc."""
    poly = np.poly1d(coefficients)
    ret, cutoff = (1, steps - 1) if mode == "e" else (5, steps)
    acc, prev, computed = 0.0, None, []
    for i, s in enumerate(sigs):
        m = s.e if mode == "e" else s.e0
        if i < ret or i >= cutoff:
            acc = 0.0
            computed.append(i)
        else:
            acc += poly(((m - prev).abs().mean() / prev.abs().mean()).item())
            if acc < threshold:
                pass
            else:
                acc = 0.0
                computed.append(i)
        prev = m
    return computed


def drive(cache: StepCache, sigs_by_branch: dict[str, list[Sig]], upto: int = STEPS) -> None:
    """Ask the cache at steps [0, upto) for every branch, as cached_forward does (fake residuals)."""
    for step, t in enumerate(TIMESTEPS[:upto]):
        for branch, sigs in sigs_by_branch.items():
            assert cache.step_for(branch, torch.tensor([t])) == step
            compute = cache.decide(step, branch, sigs[step])
            cache.finish(step, branch, torch.full((1, 2, 3), float(step)) if compute else None, torch.zeros(1))


@pytest.mark.parametrize("mode,threshold", [("e", 0.08), ("e", 0.2), ("e0", 0.05), ("e0", 0.15)])
def test_teacache_computes_exactly_the_steps_of_the_published_rule(mode, threshold):
    coefficients = TEACACHE_COEFFICIENTS[("wan2.1-t2v-1.3b", mode)]
    sigs = signals()
    cache = StepCache(TeaCacheRule(coefficients, threshold, mode), TIMESTEPS)
    drive(cache, {"cond": sigs})
    expected = reference_teacache(sigs, coefficients, threshold, mode)
    assert cache.computed_steps("cond") == tuple(expected)
    assert 3 <= len(expected) < STEPS - 3  # the rule really skipped, and really computed


def test_forced_steps_by_mode():
    """Mode e computes the first and the last step; mode e0 the first five and not the last."""
    sigs = signals()
    huge = 1e9
    for mode, expected in [("e", (0, STEPS - 1)), ("e0", (0, 1, 2, 3, 4))]:
        cache = StepCache(TeaCacheRule(TEACACHE_COEFFICIENTS[("wan2.1-t2v-1.3b", mode)], huge, mode), TIMESTEPS)
        drive(cache, {"cond": sigs})
        assert cache.computed_steps("cond") == expected


@pytest.mark.parametrize("rule", [
    TeaCacheRule(T13_E, 0.0),
    TeaCacheRule((0.0, -1.0), 0.0),  # negative rescaled changes: acc < 0, still never skipped
    FirstBlockRule(0.0),
    MagCacheRule({"cond": (1.0,) * STEPS}, 0.0, retention=0.0),
])
def test_threshold_zero_never_skips(rule):
    sigs = [Sig(s.e, s.e0, torch.ones(1, 2, 3) * 0.5) for s in signals()]  # identical first residuals
    cache = StepCache(rule, TIMESTEPS)
    drive(cache, {"cond": sigs})
    assert cache.computed_steps("cond") == tuple(range(STEPS))


def test_branches_keep_separate_accumulators_and_residuals():
    cond, uncond = signals(0), signals(7)
    cache = StepCache(TeaCacheRule(T13_E, 0.15), TIMESTEPS)
    drive(cache, {"cond": cond, "uncond": uncond})
    want_cond, want_uncond = reference_teacache(cond, T13_E, 0.15, "e"), reference_teacache(uncond, T13_E, 0.15, "e")
    assert cache.computed_steps("cond") == tuple(want_cond)
    assert cache.computed_steps("uncond") == tuple(want_uncond)
    assert want_cond != want_uncond
    # stop where the branches last computed at different steps: each holds its own residual
    stop = next(s for s in range(STEPS) if max(c for c in want_cond if c <= s) != max(c for c in want_uncond if c <= s))
    partial = StepCache(TeaCacheRule(T13_E, 0.15), TIMESTEPS)
    drive(partial, {"cond": cond, "uncond": uncond}, upto=stop + 1)
    assert float(partial.cached_residual("cond")[0, 0, 0]) == max(c for c in want_cond if c <= stop)
    assert float(partial.cached_residual("uncond")[0, 0, 0]) == max(c for c in want_uncond if c <= stop)


def test_first_block_rule_measures_against_the_last_computed_residual():
    """Residuals grow by 0.04 per step; the change is measured from the last computed step's
    residual, not the previous step's, so slow drift adds up to a recomputation."""
    base = torch.ones(1, 2, 3)
    sigs = [Sig(torch.ones(1), torch.ones(1), base * (1 + 0.04 * i)) for i in range(STEPS)]
    cache = StepCache(FirstBlockRule(0.1), TIMESTEPS)
    drive(cache, {"cond": sigs})
    expected, ref = [0], 1.0
    for i in range(1, STEPS):
        if abs(1 + 0.04 * i - ref) / ref >= 0.1:
            expected.append(i)
            ref = 1 + 0.04 * i
    assert cache.computed_steps("cond") == tuple(expected)
    assert expected[:5] == [0, 3, 6, 10, 14]  # 0.12/1.00, 0.12/1.12, 0.16/1.24, 0.16/1.40


def test_magcache_rule_against_its_published_accumulation():
    g = torch.Generator().manual_seed(3)
    ratios = tuple((1.0 - 0.05 * torch.rand(STEPS, generator=g)).tolist())
    threshold, k, retention = 0.12, 2, 0.2
    cache = StepCache(MagCacheRule({"cond": ratios}, threshold, k, retention), TIMESTEPS)
    drive(cache, {"cond": signals()})
    expected, acc_ratio, acc_err, acc_steps = [], 1.0, 0.0, 0
    for i in range(STEPS):  # MagCache4Wan2.1's loop for one branch
        if i < int(STEPS * retention):
            expected.append(i)
            continue
        acc_ratio *= ratios[i]
        acc_steps += 1
        acc_err += abs(1 - acc_ratio)
        if not (acc_err < threshold and acc_steps <= k):
            acc_ratio, acc_err, acc_steps = 1.0, 0.0, 0
            expected.append(i)
    assert cache.computed_steps("cond") == tuple(expected)
    assert len(expected) < STEPS - 5


def test_solved_threshold_is_the_smallest_reaching_the_target():
    sigs = signals(1)
    plan = solve_threshold(T13_E, "e", sigs, 2.0)
    assert len(plan.computed) * 2 <= STEPS
    assert plan.computed == tuple(reference_teacache(sigs, T13_E, plan.threshold, "e"))
    poly, es = np.poly1d(T13_E), [s.e for s in sigs]
    changes = [poly(((es[i] - es[i - 1]).abs().mean() / es[i - 1].abs().mean()).item()) for i in range(1, STEPS)]

    def computed(threshold):  # the published accumulator on the precomputed changes
        acc, out = 0.0, [0]
        for i, change in enumerate(changes, start=1):
            acc += change
            if i == STEPS - 1 or acc >= threshold:
                acc, out = 0.0, [*out, i]
        return out

    grid = np.linspace(1e-4, plan.threshold, 3000)
    reaching = [t for t in grid if len(computed(t)) * 2 <= STEPS]
    # every smaller threshold that reaches the target computes exactly the same steps ...
    assert reaching and all(computed(t) == list(plan.computed) for t in reaching)
    # ... and every threshold below those does not reach it
    lower = [t for t in grid if t < min(reaching)]
    assert lower and all(len(computed(t)) * 2 > STEPS for t in lower)
    # the threshold sits between the accumulator values, so float noise cannot flip a decision
    sums = [sum(changes[i:j]) for i in range(len(changes)) for j in range(i + 1, len(changes) + 1)]
    assert min(abs(plan.threshold - v) for v in sums) > 1e-6 * plan.threshold


def test_unreachable_target_gives_the_fewest_forwards():
    plan = solve_threshold(T13_E, "e", signals(), 1000.0)
    assert plan.computed == (0, STEPS - 1)
    assert plan.speedup == STEPS / 2


def test_solver_on_a_segment_of_the_schedule():
    """A14B: one cache per expert; the low-noise segment starts with a forced step."""
    sigs = signals(2)
    plan = solve_threshold(T13_E, "e", sigs, 1.5, start=12, stop=STEPS)
    assert plan.computed[0] == 12 and plan.computed[-1] == STEPS - 1
    assert len(plan.computed) * 1.5 <= STEPS - 12
    again = teacache_plan(TeaCacheRule(T13_E, plan.threshold), sigs, 12, STEPS)
    assert again.computed == plan.computed


def test_cache_refuses_a_call_at_an_unexpected_timestep():
    cache = StepCache(TeaCacheRule(T13_E, 0.1), TIMESTEPS)
    cache.step_for("cond", torch.tensor([TIMESTEPS[0]]))
    with pytest.raises(ModelInputError, match="one model evaluation per step"):
        cache.step_for("cond", torch.tensor([TIMESTEPS[0]]))  # a second call at step 0's t


def test_state_tensors_resume_the_same_decisions():
    sigs = signals(4)
    whole = StepCache(TeaCacheRule(T13_E, 0.12), TIMESTEPS)
    drive(whole, {"cond": sigs})
    # resume right after a skipped step, where the accumulator holds a partial sum
    split = next(s for s in range(2, STEPS) if s - 1 not in whole.computed_steps("cond"))
    first = StepCache(TeaCacheRule(T13_E, 0.12), TIMESTEPS)
    drive(first, {"cond": sigs}, upto=split)
    assert first.state("cond").acc != 0.0
    resumed = StepCache(TeaCacheRule(T13_E, 0.12), TIMESTEPS)
    resumed.load_state_tensors(first.state_tensors())
    before, after = first.state("cond"), resumed.state("cond")
    for field in ("branch", "next_step", "acc", "ratio", "err", "skips", "computed"):
        assert getattr(after, field) == getattr(before, field), field
    assert torch.equal(after.signal, before.signal) and torch.equal(after.residual, before.residual)
    for step in range(split, STEPS):
        assert resumed.step_for("cond", torch.tensor([TIMESTEPS[step]])) == step
        ok = resumed.decide(step, "cond", sigs[step])
        resumed.finish(step, "cond", torch.full((1, 2, 3), float(step)) if ok else None, torch.zeros(1))
    assert resumed.computed_steps("cond") == whole.computed_steps("cond")
    assert torch.equal(resumed.cached_residual("cond"), whole.cached_residual("cond"))


def test_magcache_ratios_from_another_step_count_are_resampled_to_the_nearest():
    calibrated = tuple(1.0 - 0.01 * i for i in range(7))
    settings = StepCacheSettings("magcache", threshold=0.1, ratios=(("cond", calibrated),))
    rule = make_step_cache(settings, TIMESTEPS).rule
    nearest = [calibrated[int(np.round(i * 6 / (STEPS - 1)))] for i in range(STEPS)]
    assert list(rule.ratios["cond"]) == nearest


# ----------------------------------------------------------------------------- coefficient sets

T2V_13B, T2V_14B = DitArchitecture("t2v", 1536, False), DitArchitecture("t2v", 5120, False)
I2V_14B = DitArchitecture("i2v", 5120, True)


def test_published_set_follows_the_architecture_not_the_name():
    assert teacache_set(T2V_13B, "my-finetune") == "wan2.1-t2v-1.3b"
    assert teacache_set(T2V_14B, "wan2.1-t2v-14b") == "wan2.1-t2v-14b"
    assert teacache_set(T2V_14B, "wan2.1-t2v-1.3b") == "wan2.1-t2v-14b"  # a wrong name changes nothing
    assert teacache_set(I2V_14B, "wan2.1-i2v-14b-480p") == "wan2.1-i2v-14b-480p"
    assert teacache_set(I2V_14B, "wan2.1-i2v-14b-720p") == "wan2.1-i2v-14b-720p"
    assert teacache_set(I2V_14B, "custom", "wan2.1-i2v-14b-720p") == "wan2.1-i2v-14b-720p"


def test_resolution_that_weights_cannot_tell_must_be_given():
    with pytest.raises(ModelInputError, match="480p from 720p"):
        teacache_set(I2V_14B, "custom-i2v")


def test_a_set_fitted_on_another_architecture_is_refused():
    with pytest.raises(ModelInputError, match="fitted on"):
        teacache_set(T2V_14B, "x", "wan2.1-t2v-1.3b")
    with pytest.raises(ModelInputError, match="no published coefficients"):
        teacache_set(DitArchitecture("t2v", 128, False), "wanflow-tiny")


@pytest.mark.parametrize("arch,family", [
    (DitArchitecture("t2v", 5120, False, experts=2), "wan2.2-t2v-a14b"),
    (DitArchitecture("t2v", 5120, False, experts=2), "some-a14b-finetune"),
    (DitArchitecture("i2v", 5120, False, experts=2), "wan2.2-i2v-a14b"),
    (DitArchitecture("ti2v", 3072, False), "wan2.2-ti2v-5b"),
])
def test_wan22_is_refused_without_calibration(arch, family):
    settings = StepCacheSettings("teacache", threshold=0.1)
    with pytest.raises(ModelInputError, match="Wan2.2.*calibrate.*first-block"):
        make_step_cache(settings, TIMESTEPS, arch=arch, family=family)
    with pytest.raises(ModelInputError, match="Wan2.2"):  # not even by naming a 2.1 set
        make_step_cache(StepCacheSettings("teacache", threshold=0.1, coefficients="wan2.1-t2v-14b"),
                        TIMESTEPS, arch=arch, family=family)
    calibrated = StepCacheSettings("teacache", threshold=0.1, coefficients="calibrated", calibrated=(1.0, 0.0))
    cache = make_step_cache(calibrated, TIMESTEPS, arch=arch, family=family)
    assert cache.rule.coefficients == (1.0, 0.0)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings,message", [
    (StepCacheSettings("teacache", threshold=-0.1), "threshold = -0.1"),
    (StepCacheSettings("teacache", threshold=math.nan), "threshold = nan"),
    (StepCacheSettings("teacache", target_speedup=0.5), "target_speedup = 0.5"),
    (StepCacheSettings("first-block", target_speedup=2.0), "only TeaCache"),
    (StepCacheSettings("teacache"), "exactly one of threshold and target_speedup"),
    (StepCacheSettings("teacache", threshold=0.1, target_speedup=2.0), "exactly one"),
    (StepCacheSettings("tea", threshold=0.1), "method = 'tea'"),
    (StepCacheSettings("teacache", threshold=0.1, mode="x"), "mode = 'x'"),
    (StepCacheSettings("magcache", threshold=0.1), "ratios"),
    (StepCacheSettings("teacache", threshold=0.1, coefficients="calibrated"), "calibrated"),
])
def test_bad_settings_are_refused_naming_the_key(settings, message):
    with pytest.raises(ModelInputError, match="sampler.cache") as err:
        settings.check()
    assert message in str(err.value)


def test_key_changes_with_every_setting():
    base = StepCacheSettings("teacache", threshold=0.1)
    variants = [
        StepCacheSettings("first-block", threshold=0.1),
        StepCacheSettings("teacache", threshold=0.2),
        StepCacheSettings("teacache", target_speedup=2.0),
        StepCacheSettings("teacache", threshold=0.1, mode="e0"),
        StepCacheSettings("teacache", threshold=0.1, coefficients="wan2.1-t2v-14b"),
        StepCacheSettings("teacache", threshold=0.1, coefficients="calibrated", calibrated=(1.0, 2.0)),
        StepCacheSettings("teacache", threshold=0.1, ratios=(("cond", (1.0,)),)),
        StepCacheSettings("teacache", threshold=0.1, max_skips=3),
        StepCacheSettings("teacache", threshold=0.1, retention=0.3),
    ]
    keys = [repr(sorted(s.key().items())) for s in [base, *variants]]
    assert len(set(keys)) == len(keys) == 10
    assert base.key()["ratios"] == [] and isinstance(variants[5].key()["calibrated"], list)
