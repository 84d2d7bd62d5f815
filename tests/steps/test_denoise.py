"""The denoise step on tiny DiTs: bit-exact resume, A14B experts one at a time, cfg 1, TI2V, V2V."""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout import tiny, write_dit
from tests.steps._ctx import Ctx, Stop
from wanflow.memory import pool as model_pool
from wanflow.plugins import SamplerEntry
from wanflow.sampling import BUILTIN_SOLVERS, expert_segments, make_schedule, noised
from wanflow.steps import denoise
from wanflow.steps.denoise import Denoise

PARAMS = {
    "sampler.solver": "unipc", "sampler.steps": 4, "sampler.shift": 5.0, "sampler.cfg": 3.0,
    "sampler.cfg_high_noise": None, "sampler.boundary": 0.875, "sampler.seed": 0,
    "sampler.noise_device": "cpu", "sampler.denoising_strength": 1.0, "video.width": 16,
    "video.height": 16, "video.frames": 5, "runtime.device": "cpu", "runtime.dtype": "fp32",
    "runtime.attention": "sdpa", "runtime.compile": "none", "sampler.strength_schedule": "rescale",
    "model": "wan2.1-t2v-1.3b",
    "sampler.cache.method": "none", "sampler.cache.threshold": None, "sampler.cache.target_speedup": None,
    "sampler.cache.mode": "e", "sampler.cache.coefficients": "auto", "sampler.cache.calibrated": (),
    "sampler.cache.ratios_cond": (), "sampler.cache.ratios_uncond": (), "sampler.cache.max_skips": 2,
    "sampler.cache.retention": 0.2, "sampler.cfg_merge": False, "sampler.cfg_zero_star": False,
    "sampler.cfg_zero_init_steps": 0, "sampler.slg_blocks": (), "sampler.slg_scale": 1.0,
    "sampler.slg_start": 0.1, "sampler.slg_end": 1.0, "sampler.slg_mode": "uncond",
    "sampler.sliding_window_size": None, "sampler.sliding_window_stride": None,
}
UNIPC = SamplerEntry("unipc", lambda: BUILTIN_SOLVERS["unipc"])


@pytest.fixture(scope="module")
def dits(tmp_path_factory):
    """Tiny T2V (two experts) and TI2V DiTs, one folder each."""
    root = tmp_path_factory.mktemp("dits")
    specs = {"high": ("t2v", 16, 16, 1), "low": ("t2v", 16, 16, 2), "ti2v": ("ti2v", 48, 48, 3)}
    for name, (kind, cin, cout, seed) in specs.items():
        write_dit(root / name, tiny.tiny_dit_config(kind, cin, cout), seed, shards=1)
    return {name: root / name for name in specs}


def weights(role: str, folder) -> dict:
    return {f"{role}.0": folder / "diffusion_pytorch_model.safetensors", f"{role}.1": folder / "config.json"}


def texts() -> dict:
    g = torch.Generator().manual_seed(5)
    return {"pos": {"context": torch.randn(1, 6, 64, generator=g)},
            "neg": {"context": torch.randn(1, 3, 64, generator=g)}}


def run(step: Denoise, params: dict, inputs: dict, w: dict, **kw) -> torch.Tensor:
    return step.run(Ctx({**PARAMS, **params}, inputs, w, **kw))["latents"]


T2V = Denoise(experts=(("dit", 2),), z_dim=16, latent_stride=8, solver=UNIPC)


def test_a_killed_run_resumes_bit_for_bit(dits, monkeypatch):
    monkeypatch.setattr(denoise, "CHECKPOINT_EVERY", 2)
    w = weights("dit", dits["high"])
    full = run(T2V, {}, texts(), w)
    killed = Ctx(PARAMS, texts(), w, stop_after=2)
    with pytest.raises(Stop):
        T2V.run(killed)
    assert killed.partial[0] == 2 and "history.0" in killed.partial[1]  # UniPC carries its history
    resumed = Ctx(PARAMS, texts(), w, partial=killed.partial)
    out = T2V.run(resumed)["latents"]
    assert torch.equal(out, full)
    assert resumed.bars[0][0] == 2  # only the two remaining steps ran


def test_cfg_one_never_asks_for_the_negative(dits):
    inputs = {"pos": texts()["pos"]}  # Ctx raises KeyError on any other input
    out = run(T2V, {"sampler.cfg": 1.0}, inputs, weights("dit", dits["high"]))
    guided = run(T2V, {}, texts(), weights("dit", dits["high"]))
    assert not torch.allclose(out, guided)


def test_a14b_runs_each_expert_alone_with_its_own_guidance(dits, monkeypatch):
    step = Denoise(experts=(("dit_high_noise", 2), ("dit_low_noise", 2)), z_dim=16, latent_stride=8, solver=UNIPC)
    w = {**weights("dit_high_noise", dits["high"]), **weights("dit_low_noise", dits["low"])}
    segments = expert_segments(make_schedule("unipc", 4, 5.0), 0.875)
    assert len(segments) == 2  # the test needs a switch inside the schedule
    loads, load = [], model_pool.dit

    def recording(files, *args, **kwargs):
        model = load(files, *args, **kwargs)
        loads.append((files[0].parent.name, sum(k[0] == "dit" for k in model_pool._POOL)))
        return model

    monkeypatch.setattr(model_pool, "dit", recording)
    model_pool.clear()
    base = run(step, {}, texts(), w)
    assert loads == [("high", 1), ("low", 1)]
    same = run(step, {"sampler.cfg_high_noise": 3.0}, texts(), w)
    other = run(step, {"sampler.cfg_high_noise": 4.0}, texts(), w)
    assert torch.equal(base, same) and not torch.allclose(base, other)


def test_ti2v_keeps_the_first_frame_latent(dits):
    step = Denoise(experts=(("dit", 2),), z_dim=48, latent_stride=16, conditions=("z0",), solver=UNIPC)
    z0 = torch.randn(1, 48, 1, 1, 1, generator=torch.Generator().manual_seed(2))
    params = {"video.width": 32, "video.height": 32}
    out = run(step, params, {**texts(), "z0": {"z0": z0}}, weights("dit", dits["ti2v"]))
    assert out.shape == (1, 48, 2, 2, 2)
    assert torch.equal(out[:, :, :1], z0.expand(1, 48, 1, 2, 2))
    assert not torch.allclose(out[:, :, 1:], torch.zeros(()))


def test_video_to_video_keeps_more_of_the_input_at_lower_strength(dits):
    step = Denoise(experts=(("dit", 2),), z_dim=16, latent_stride=8, conditions=("x0",), solver=UNIPC)
    x0 = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    inputs, w = {**texts(), "x0": {"x0": x0}}, weights("dit", dits["high"])
    truncate = {"sampler.strength_schedule": "truncate"}
    assert torch.equal(run(step, {"sampler.denoising_strength": 0.0, **truncate}, inputs, w), x0)
    for mode in ({}, truncate):
        low = run(step, {"sampler.denoising_strength": 0.3, **mode}, inputs, w)
        half = run(step, {"sampler.denoising_strength": 0.5, **mode}, inputs, w)
        full = run(step, {"sampler.denoising_strength": 1.0, **mode}, inputs, w)
        assert (low - x0).norm() < (half - x0).norm() < (full - x0).norm()


def test_strength_rescales_the_grid_and_takes_every_step(dits):
    """DiffSynth's rule: all `steps` steps on shift(linspace(strength, 0, N+1)[:-1]), starting from
    (1 − σ0)·x0 + σ0·ε; diffusers' rule ("truncate") runs round(strength·N) steps of the full grid."""
    x0 = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    step = Denoise(experts=(("dit", 2),), z_dim=16, latent_stride=8, conditions=("x0",),
                   solver=SamplerEntry("euler", lambda: BUILTIN_SOLVERS["euler"]))
    params = {**PARAMS, "sampler.solver": "euler", "sampler.steps": 4, "sampler.denoising_strength": 0.5}
    grid = torch.linspace(0.5, 0.0, 5, dtype=torch.float32)[:-1]
    expected = 5.0 * grid / (1 + 4.0 * grid)
    schedule = step.schedule(params)
    assert torch.equal(schedule.sigmas[:-1], expected) and schedule.steps == 4
    ctx = Ctx(params, {**texts(), "x0": {"x0": x0}}, weights("dit", dits["high"]))
    step.run(ctx)
    assert ctx.bars[0][0] == 4  # every step ran
    first = step._start(params, schedule, {"x0": {"x0": x0}})
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(first.x, noised(x0, noise, float(expected[0])))
    truncated = step.schedule({**params, "sampler.strength_schedule": "truncate"})
    assert float(truncated.sigmas[0]) == 1.0  # the strength-1 grid; two of its steps are skipped
    ctx = Ctx({**params, "sampler.strength_schedule": "truncate"}, {**texts(), "x0": {"x0": x0}},
              weights("dit", dits["high"]))
    step.run(ctx)
    assert ctx.bars[0][0] == 2


def test_a_step_cache_never_skipping_equals_no_cache_and_a_skipping_one_resumes_bit_for_bit(dits, monkeypatch):
    from wanflow.models import dit_cache

    w = weights("dit", dits["high"])
    plain = run(T2V, {"sampler.steps": 6}, texts(), w)
    never = run(T2V, {"sampler.steps": 6, "sampler.cache.method": "first-block",
                      "sampler.cache.threshold": 0.0}, texts(), w)
    assert torch.equal(never, plain)
    calls = []
    real = dit_cache.run_blocks
    monkeypatch.setattr(dit_cache, "run_blocks", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    skipping = {"sampler.steps": 6, "sampler.cache.method": "first-block", "sampler.cache.threshold": 10.0}
    cached = run(T2V, skipping, texts(), w)
    stacks = sum(first == 1 for first in calls)  # runs of blocks 1..N-1 (block 0 always runs)
    assert stacks < 2 * 6 and not torch.equal(cached, plain)  # steps were skipped, numbers changed
    monkeypatch.setattr(denoise, "CHECKPOINT_EVERY", 2)
    killed = Ctx({**PARAMS, **skipping}, texts(), w, stop_after=4)
    with pytest.raises(Stop):
        T2V.run(killed)
    assert any(k.startswith(denoise.CACHE_PREFIX) for k in killed.partial[1])
    resumed = T2V.run(Ctx({**PARAMS, **skipping}, texts(), w, partial=killed.partial))["latents"]
    assert torch.equal(resumed, cached)


def test_guidance_options_reach_the_sampler(dits):
    """cfg_merge gives the two-pass numbers to fp32 rounding; CFG-Zero*, its zero-init and
    skip-layer guidance each change the result; SLG on a block the DiT lacks is refused."""
    from wanflow.errors import ModelInputError

    w = weights("dit", dits["high"])
    plain = run(T2V, {}, texts(), w)
    merged = run(T2V, {"sampler.cfg_merge": True}, texts(), w)
    torch.testing.assert_close(merged, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    for option in ({"sampler.cfg_zero_star": True},
                   {"sampler.cfg_zero_star": True, "sampler.cfg_zero_init_steps": 1},
                   {"sampler.slg_blocks": (1,), "sampler.slg_start": 0.0},
                   {"sampler.slg_blocks": (0,), "sampler.slg_start": 0.0, "sampler.slg_mode": "extra"}):
        assert not torch.allclose(run(T2V, option, texts(), w), plain), option
    with pytest.raises(ModelInputError, match="blocks"):
        run(T2V, {"sampler.slg_blocks": (7,)}, texts(), w)


def test_sliding_windows_equal_the_whole_pass_when_one_window_covers_the_clip(dits):
    w = weights("dit", dits["high"])
    params = {"video.frames": 13}  # 4 latent frames
    whole = run(T2V, params, texts(), w)
    covering = run(T2V, {**params, "sampler.sliding_window_size": 4, "sampler.sliding_window_stride": 2},
                   texts(), w)
    assert torch.equal(covering, whole)
    windowed = run(T2V, {**params, "sampler.sliding_window_size": 2, "sampler.sliding_window_stride": 1},
                   texts(), w)
    assert windowed.shape == whole.shape and not torch.allclose(windowed, whole)


def test_each_prompt_is_prepared_once_whatever_the_passes(dits, monkeypatch):
    """Guidance, cfg_merge's pair and the skip-layer pass share each prompt's prepared keys/values
    (under a streaming memory plan every preparation reads every block again)."""
    from wanflow.models.dit import WanDiT

    calls = []
    real = WanDiT.prepare_context
    monkeypatch.setattr(WanDiT, "prepare_context", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    run(T2V, {"sampler.cfg_merge": True, "sampler.slg_blocks": (1,), "sampler.slg_start": 0.0,
              "sampler.slg_scale": 0.5}, texts(), weights("dit", dits["high"]))
    assert len(calls) == 2  # the prompt and the negative, once each


@pytest.mark.parametrize("method, extra", [
    ("teacache", {"sampler.cache.threshold": 0.5, "sampler.cache.coefficients": "calibrated",
                  "sampler.cache.calibrated": (0.0, 0.0, 0.0, 1.0, 0.0)}),
    ("magcache", {"sampler.cache.threshold": 0.5, "sampler.cache.ratios_cond": (1.0,) * 8,
                  "sampler.cache.ratios_uncond": (1.0,) * 8}),
    ("easycache", {"sampler.cache.threshold": 0.5}),
])
def test_a_cache_resumed_mid_run_skips_the_steps_an_uninterrupted_run_skips(dits, monkeypatch, method, extra):
    """The cache's warm-up and plan count from the segment's first step, not from the resume
    point: a resumed run must not compute a step the uninterrupted run skipped."""
    w = weights("dit", dits["high"])
    settings = {"sampler.steps": 8, "sampler.cache.method": method, **extra}
    whole = run(T2V, settings, texts(), w)
    monkeypatch.setattr(denoise, "CHECKPOINT_EVERY", 2)
    killed = Ctx({**PARAMS, **settings}, texts(), w, stop_after=4)
    with pytest.raises(Stop):
        T2V.run(killed)
    resumed = T2V.run(Ctx({**PARAMS, **settings}, texts(), w, partial=killed.partial))["latents"]
    assert torch.equal(resumed, whole)
