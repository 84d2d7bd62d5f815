"""The DiT run with a step cache: bit-identical when nothing is skipped, the cached residual added
when something is, the solved plan followed by a real sampler, and calibration on a tiny DiT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models._dit_fixtures import inputs, random_state, tiny_config
from wanflow.models.dit import WanDiT
from wanflow.models.dit_cache import cached_forward, time_signals
from wanflow.models.rope import rope_table
from wanflow.sampling import cfg_model, sample, unipc_schedule
from wanflow.sampling.step_cache import (
    FirstBlockRule,
    StepCache,
    TeaCacheRule,
    relative_l1,
)
from wanflow.sampling.step_cache_calibration import Calibration
from wanflow.sampling.step_cache_settings import StepCacheSettings, make_step_cache
from wanflow.sampling.teacache import DitArchitecture

STEPS = 8


def tiny_dit(variant: str = "t2v", layers: int = 3) -> WanDiT:
    cfg = tiny_config(variant, num_layers=layers)
    dit = WanDiT(cfg)
    dit.load_state_dict(random_state(cfg))
    return dit.eval()


def model_fn(dit, inp, cache=None, branch="cond", context_key="context"):
    """(x, t) -> velocity with the prompt bound, cached or plain, as the denoise step builds it."""
    context = dit.prepare_context(inp[context_key], inp.get("clip_fea"))
    extra = {"y": inp["y"]} if "y" in inp else {}

    def velocity(x, t):
        if cache is None:
            return dit(x, t.reshape(1), context, **extra)
        return cached_forward(dit, x, t.reshape(1), context, **extra, cache=cache, branch=branch)

    return velocity


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
@pytest.mark.parametrize("rule", [TeaCacheRule((1.0, 0.0), 0.0), FirstBlockRule(0.0)])
def test_a_cache_that_never_skips_equals_the_plain_forward_bit_for_bit(variant, rule):
    dit, inp = tiny_dit(variant), inputs(tiny_config(variant, num_layers=3))
    schedule = unipc_schedule(STEPS, 5.0)
    cache = StepCache(rule, schedule.timesteps)
    extra = {k: inp[k] for k in ("clip_fea", "y") if k in inp}
    with torch.no_grad():
        for step, t in enumerate(schedule.timesteps):
            x = inp["x"] + 0.1 * step
            plain = dit(x, t.reshape(1), inp["context"], **extra)
            cached = cached_forward(dit, x, t.reshape(1), inp["context"], **extra, cache=cache, branch="cond")
            assert torch.equal(plain, cached)
    assert cache.computed_steps("cond") == tuple(range(STEPS))


def test_skip_layer_passes_are_cached_with_the_same_blocks_left_out():
    dit, inp = tiny_dit(), inputs(tiny_config(num_layers=3))
    schedule = unipc_schedule(3, 5.0)
    cache = StepCache(FirstBlockRule(0.0), schedule.timesteps)
    with torch.no_grad():
        for t in schedule.timesteps:
            plain = dit(inp["x"], t.reshape(1), inp["context"], skip_blocks=(1,))
            cached = cached_forward(dit, inp["x"], t.reshape(1), inp["context"], skip_blocks=(1,),
                                    cache=cache, branch="skip-layer")
            assert torch.equal(plain, cached)
            assert not torch.equal(plain, dit(inp["x"], t.reshape(1), inp["context"]))


def by_hand(dit: WanDiT, x, t, context, residual, first_block: bool):
    """The forward written out with the blocks replaced by ``+ residual`` (after block 0 if asked)."""
    grid = (x.shape[2], x.shape[3] // 2, x.shape[4] // 2)
    tokens = dit.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, L, D)
    e, e0 = dit.embed_time(t)
    ctx = dit.embed_context(context, None)
    if first_block:
        tokens = dit.blocks[0](tokens, e0, ctx, rope_table(grid, dit.cfg.head_dim, x.device, x.dtype), 0, "sdpa")
    return dit.unpatchify(dit.head(tokens + residual, e), grid)


@pytest.mark.parametrize("first_block", [False, True])
def test_a_skipped_step_adds_the_cached_residual(first_block):
    dit, inp = tiny_dit(), inputs(tiny_config(num_layers=3))
    ts = [torch.tensor([900.0]), torch.tensor([880.0])]
    rule = FirstBlockRule(10.0) if first_block else TeaCacheRule((1.0, 0.0), 10.0, "e")
    cache = StepCache(rule, [900.0, 880.0, 0.0])
    x0, x1 = inp["x"], inp["x"] * 0.9 + 0.05
    with torch.no_grad():
        cached_forward(dit, x0, ts[0], inp["context"], cache=cache, branch="cond")
        residual = cache.cached_residual("cond").clone()
        skipped = cached_forward(dit, x1, ts[1], inp["context"], cache=cache, branch="cond")
        expected = by_hand(dit, x1, ts[1], inp["context"], residual, first_block)
        computed = dit(x1, ts[1], inp["context"])
    assert cache.computed_steps("cond") == (0,)
    assert torch.equal(skipped, expected)
    assert not torch.allclose(skipped, computed, atol=1e-3)  # it really reused, not recomputed


def test_the_residual_is_what_the_blocks_added():
    """After a computed step the cache holds stack(tokens) − tokens (blocks 1.. for first-block)."""
    dit, inp = tiny_dit(), inputs(tiny_config(num_layers=3))
    t = torch.tensor([900.0])
    with torch.no_grad():
        for rule, first in [(TeaCacheRule((1.0,), 0.0), 0), (FirstBlockRule(0.0), 1)]:
            cache = StepCache(rule, [900.0])
            cached_forward(dit, inp["x"], t, inp["context"], cache=cache, branch="cond")
            grid = (3, 4, 4)
            tokens = dit.patch_embedding(inp["x"]).flatten(2).transpose(1, 2)
            _, e0 = dit.embed_time(t)
            ctx, rope = dit.embed_context(inp["context"], None), rope_table(grid, 64, "cpu", torch.float32)
            outs = [tokens]
            for block in dit.blocks:
                outs.append(block(outs[-1], e0, ctx, rope, 0, "sdpa"))
            assert torch.equal(cache.cached_residual("cond"), outs[-1] - outs[first])


def run_guided(dit, inp, neg, schedule, cache=None):
    """A full CFG sampling run (UniPC) with the cond and uncond passes cached separately."""
    cond = model_fn(dit, inp, cache, "cond")
    uncond = model_fn(dit, {**inp, "context": neg}, cache, "uncond")
    return sample("unipc", cfg_model(cond, uncond, 5.0), inp["x"], schedule)


def test_the_sampler_computes_exactly_the_solved_plan():
    dit, inp = tiny_dit(), inputs(tiny_config(num_layers=3))
    neg = torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(9))
    schedule = unipc_schedule(16, 5.0)
    signals = time_signals(dit, [t.reshape(1) for t in schedule.timesteps])
    settings = StepCacheSettings("teacache", target_speedup=2.0, coefficients="calibrated",
                                 calibrated=(0.05, 0.0))
    cache = make_step_cache(settings, schedule.timesteps, arch=DitArchitecture.of(dit.cfg), signals=signals)
    assert len(cache.plan.computed) * 2 <= 16 and 0 in cache.plan.computed and 15 in cache.plan.computed
    runs = []
    dit.blocks[-1].register_forward_hook(lambda *_: runs.append(1))
    with torch.no_grad():
        cached = run_guided(dit, inp, neg, schedule, cache)
        assert len(runs) == 2 * len(cache.plan.computed)  # the last block ran only on planned steps
        plain = run_guided(dit, inp, neg, schedule)
    assert cache.computed_steps("cond") == cache.computed_steps("uncond") == cache.plan.computed
    assert not torch.equal(cached.x, plain.x)


def test_calibration_reproduces_the_observed_relation():
    """The recorded pairs are the relative changes of e and of the output between consecutive
    uncached steps (recomputed here by plain forwards), and the fit is their least-squares poly."""
    dit, inp = tiny_dit(), inputs(tiny_config(num_layers=3))
    schedule = unipc_schedule(12, 5.0)
    calibration = Calibration(schedule.timesteps)
    outputs = []
    with torch.no_grad():
        fn = model_fn(dit, inp, calibration, "cond")
        plain = model_fn(dit, inp)
        sample("unipc", fn, inp["x"], schedule, callback=None)
        sample("unipc", lambda x, t: outputs.append(plain(x, t)) or outputs[-1], inp["x"], schedule)
        es = [dit.embed_time(t.reshape(1))[0] for t in schedule.timesteps]
    x = [relative_l1(es[i], es[i - 1]) for i in range(1, 12)]
    y = [relative_l1(outputs[i], outputs[i - 1]) for i in range(1, 12)]
    assert calibration.pairs["e"] == list(zip(x, y))
    coefficients = calibration.teacache_coefficients("e", degree=2)
    vander = torch.tensor([[xi**2, xi, 1.0] for xi in x], dtype=torch.float64)
    lstsq = torch.linalg.lstsq(vander, torch.tensor(y, dtype=torch.float64)[:, None]).solution.flatten()
    assert np.allclose(coefficients, lstsq.numpy(), rtol=1e-6, atol=1e-9)
    fitted = np.polyval(coefficients, x)
    assert np.mean((fitted - y) ** 2) < np.var(y)  # it explains the relation better than a constant


def test_calibration_ratios_are_residual_magnitude_ratios():
    dit, inp = tiny_dit(), inputs(tiny_config(num_layers=3))
    schedule = unipc_schedule(6, 5.0)
    calibration = Calibration(schedule.timesteps)
    residuals = []
    with torch.no_grad():
        sample("unipc", model_fn(dit, inp, calibration, "cond"), inp["x"], schedule)
        recorder = StepCache(TeaCacheRule((1.0,), 0.0), schedule.timesteps)  # never skips
        fn = model_fn(dit, inp, recorder, "cond")

        def record(x, t):
            out = fn(x, t)
            residuals.append(recorder.cached_residual("cond"))
            return out

        sample("unipc", record, inp["x"], schedule)
    expected = [1.0] + [(residuals[i].norm(dim=-1) / residuals[i - 1].norm(dim=-1)).mean().item()
                        for i in range(1, 6)]
    ((branch, ratios),) = calibration.magcache_ratios()
    assert branch == "cond" and np.allclose(ratios, expected, rtol=1e-6)
    assert not np.allclose(ratios, 1.0)
    settings = StepCacheSettings("magcache", threshold=0.5, ratios=calibration.magcache_ratios(), retention=0.0)
    assert make_step_cache(settings, schedule.timesteps).rule.ratios["cond"] == ratios
