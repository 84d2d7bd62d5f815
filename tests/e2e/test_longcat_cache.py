"""Step caches on LongCat-Video's denoise step, on the tiny release in its real layout.

A cache that never skips (First-Block-Cache at threshold 0) gives the uncached video bit for bit,
so the cached forward makes LongCat's calls in LongCat's order; a First-Block-Cache that skips
equals the tiny DiT driven by hand through the same rule and changes the denoise's key only;
`wanflow cache calibrate` fits TeaCache and MagCache on LongCat's own denoise (nothing is published
for it), and the fit runs; unfitted TeaCache and MagCache are refused before anything runs.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_longcat import REPO, SHIFT
from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_longcat_runs import _executed
from wanflow.errors import WanflowError

FAMILY = "longcat-video"


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, **cache):
    sampler = {"steps": 6, **({"cache": cache} if cache else {})}
    return write_recipe(tmp_path, FAMILY, video={"width": 16, "height": 16, "frames": 9}, sampler=sampler)


def test_a_cache_that_never_skips_gives_the_uncached_latents_bit_for_bit(longcat_env, tmp_path):
    plain = next(_executed(_recipe(tmp_path)))[1].load("denoise")["latents"]
    (tmp_path / "cached").mkdir()
    cached = next(_executed(_recipe(tmp_path / "cached", method="first-block", threshold=0.0)))[1]
    assert torch.equal(cached.load("denoise")["latents"], plain)


def test_a_first_block_cache_skips_as_its_rule_says(longcat_env, longcat_root, tmp_path):
    """First-Block-Cache written out on the DiT's parts: block 0 always runs; while its residual
    moved less than the threshold (mean |Δ| / mean |before|) since the last step that ran the
    stack, blocks 1.. are replaced by that step's residual; per guidance pass."""
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import longcat_schedule

    schedule = longcat_schedule(6, SHIFT, enhance_hf=False)
    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    for _, ex in _executed(_recipe(tmp_path, method="first-block", threshold=0.5)):
        contexts = {"cond": ex.load("encode-text:positive")["context"],
                    "uncond": ex.load("encode-text:negative")["context"]}
        state = {b: {"signal": None, "residual": None, "ran": 0} for b in contexts}

        def velocity(x, t, branch):
            s = state[branch]
            inputs = dit.embed_inputs(x, t.reshape(1), contexts[branch])
            head = dit.run_blocks(inputs, inputs.tokens, 0, 1)
            r1 = head - inputs.tokens
            if s["signal"] is not None and (r1 - s["signal"]).abs().mean() / s["signal"].abs().mean() < 0.5:
                out = head + s["residual"]
            else:
                out = dit.run_blocks(inputs, head, 1, len(dit.blocks))
                s.update(signal=r1, residual=out - head, ran=s["ran"] + 1)
            return -dit.head_output(inputs, out)

        x = initial_noise((1, 16, 3, 2, 2), 0, noise_device="cpu")
        for i, t in enumerate(schedule.timesteps):
            with torch.no_grad():
                vc, vu = velocity(x, t, "cond"), velocity(x, t, "uncond")
            s = (vc * vu).sum() / (vu.pow(2).sum() + 1e-8)  # CFG-Zero* at 4, the authors' default
            x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (s * vu + 4.0 * (vc - s * vu))
        ours = ex.load("denoise")["latents"]
        assert torch.allclose(ours, x, rtol=1e-5, atol=1e-5), (ours - x).abs().max()
        assert state["cond"]["ran"] < 6 and state["uncond"]["ran"] < 6  # it skipped


def test_the_cache_settings_are_keyed_and_refused_where_they_cannot_apply(longcat_env, tmp_path):
    from wanflow.recipe import load_recipe

    recipe = _recipe(tmp_path)
    run(recipe, longcat_env)
    cached = run(recipe, longcat_env, 'sampler.cache.method="easycache"', "sampler.cache.threshold=5.0")
    assert computed(cached) == {"denoise", "decode", "save", "save-metadata"}  # EasyCache skipped: another video
    again = run(recipe, longcat_env, 'sampler.cache.method="easycache"', "sampler.cache.threshold=5.0")
    assert computed(again) == set()
    with pytest.raises(WanflowError, match="no TeaCache polynomial is published for LongCat-Video"):
        load_recipe(recipe, sets=('sampler.cache.method="teacache"', "sampler.cache.threshold=0.1"))
    with pytest.raises(WanflowError, match="ratios"):  # MagCache without a calibration's ratios
        load_recipe(recipe, sets=('sampler.cache.method="magcache"', "sampler.cache.threshold=0.1"))


def test_calibration_fits_longcat_as_a_calibration_by_hand_and_its_fit_runs(longcat_env, longcat_root, tmp_path,
                                                                            capsys):
    """`wanflow cache calibrate` on a LongCat recipe: the recipe's own denoise, never skipping,
    fits the TeaCache polynomial and MagCache ratios a Calibration fits when the tiny DiT is
    driven by hand; pasted into the recipe, TeaCache at a 2x target and MagCache both run."""
    import numpy as np
    import tomllib

    from wanflow.cli import main
    from wanflow.models.longcat_cache import cached_forward
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity, longcat_schedule
    from wanflow.sampling.step_cache_calibration import Calibration

    recipe = _recipe(tmp_path)
    assert main(["cache", "calibrate", str(recipe), "--runs", "1"]) == 0
    fragment = tomllib.loads(capsys.readouterr().out)

    schedule = longcat_schedule(6, SHIFT, enhance_hf=False)
    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    calibration = Calibration(schedule.timesteps)
    for _, ex in _executed(recipe):
        pos, neg = ex.load("encode-text:positive")["context"], ex.load("encode-text:negative")["context"]
    x = initial_noise((1, 16, 3, 2, 2), 0, noise_device="cpu")
    for i, t in enumerate(schedule.timesteps):
        with torch.no_grad():
            vc, vu = (flow_velocity(cached_forward(dit, x, t.reshape(1), c, step_cache=calibration, branch=b))
                      for c, b in ((pos, "cond"), (neg, "uncond")))
        s = (vc * vu).sum() / (vu.pow(2).sum() + 1e-8)
        x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (s * vu + 4.0 * (vc - s * vu))
    # the by-hand loop's CFG-Zero* rounds apart from the step's in the last bits, which the
    # degree-4 fit amplifies to ~2e-5
    np.testing.assert_allclose(fragment["calibrated"], calibration.teacache_coefficients("e"), rtol=1e-4)
    ratios = dict(calibration.magcache_ratios())
    np.testing.assert_allclose(fragment["ratios_cond"], ratios["cond"], rtol=1e-5)
    np.testing.assert_allclose(fragment["ratios_uncond"], ratios["uncond"], rtol=1e-5)

    plain = run(recipe, longcat_env)
    fit = {k: fragment[k] for k in ("coefficients", "calibrated", "ratios_cond", "ratios_uncond")}
    for method, extra in (("teacache", {"target_speedup": 2.0}), ("magcache", {"threshold": 0.5})):
        (tmp_path / method).mkdir()
        cached = _recipe(tmp_path / method, method=method, **extra, **fit)
        outcome = run(cached, longcat_env)
        assert computed(outcome) >= {"denoise", "decode"}
        assert not {"encode-text:positive", "encode-text:negative"} & computed(outcome)
        assert (outcome.archive / "outputs" / "video.mp4").read_bytes() != \
            (plain.archive / "outputs" / "video.mp4").read_bytes()
