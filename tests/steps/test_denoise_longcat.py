"""LongCat-Video's denoise step on its own: a killed run resumes bit for bit, the conditioning
frames come back unchanged, and without them the clip is text-to-video."""

from __future__ import annotations

import attrs
import pytest
import torch

from tests.e2e._layout_longcat import write_longcat_repo
from tests.steps._ctx import Ctx, Stop
from wanflow.plugins.hookspecs import SamplerEntry
from wanflow.sampling.longcat import SOLVER
from wanflow.steps import denoise_longcat
from wanflow.steps.denoise_longcat import LongCatDenoise

PARAMS = {"sampler.solver": "longcat", "sampler.steps": 3, "sampler.shift": 5.0, "sampler.cfg": 4.0,
          "sampler.cfg_zero_star": True, "sampler.cfg_zero_init_steps": 0, "sampler.seed": 0,
          "sampler.noise_device": "cpu", "video.width": 16, "video.height": 16, "video.frames": 13,
          "runtime.device": "cpu", "runtime.dtype": "fp32", "runtime.attention": "sdpa", "runtime.compile": "none",
          "sampler.cfg_merge": False, "sampler.cache.method": "none"}
STEP = LongCatDenoise(dit_files=4, z_dim=16, latent_stride=8, conditions=("longcat",), tail=True,
                      solver=SamplerEntry("longcat", lambda: SOLVER))  # a continuation: the enhance_hf tail


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    repo = write_longcat_repo(tmp_path_factory.mktemp("longcat"))
    files = sorted((repo / "dit").iterdir())
    return {**{f"dit.{i}": f for i, f in enumerate(files)}, "scheduler": repo / "scheduler" / "scheduler_config.json"}


def _inputs(cond: bool = True) -> dict:
    g = torch.Generator().manual_seed(5)
    out = {"pos": {"context": torch.randn(1, 7, 64, generator=g)}, "neg": {"context": torch.randn(1, 3, 64, generator=g)}}
    if cond:
        out["longcat"] = {"latents": torch.randn(1, 16, 2, 2, 2, generator=g)}
    return out


def test_a_killed_run_resumes_bit_for_bit(weights, monkeypatch):
    monkeypatch.setattr(denoise_longcat, "CHECKPOINT_EVERY", 5)
    full = STEP.run(Ctx(PARAMS, _inputs(), weights))["latents"]
    killed = Ctx(PARAMS, _inputs(), weights, stop_after=5)
    with pytest.raises(Stop):
        STEP.run(killed)
    assert killed.partial[0] == 5 and killed.partial[1]["x"].shape == (1, 16, 2, 2, 2)  # the frames to denoise
    resumed = Ctx(PARAMS, _inputs(), weights, partial=killed.partial)
    assert torch.equal(STEP.run(resumed)["latents"], full)
    assert resumed.bars[0][0] == 12 - 5  # only the remaining steps of the 12 (2 of the σ list, 10 of the tail)


def test_the_conditioning_frames_come_back_unchanged_and_without_them_it_is_text_to_video(weights):
    found = STEP.run(Ctx(PARAMS, _inputs(), weights))["latents"]
    assert found.shape == (1, 16, 4, 2, 2)
    assert torch.equal(found[:, :, :2], _inputs()["longcat"]["latents"])
    t2v = LongCatDenoise(dit_files=4, z_dim=16, latent_stride=8, solver=STEP.solver)
    alone = t2v.run(Ctx(PARAMS, _inputs(cond=False), weights))["latents"]
    assert alone.shape == (1, 16, 4, 2, 2)
    assert (alone[:, :, 2:] - found[:, :, 2:]).abs().max() > 1e-3  # the conditioning reaches the new frames


def test_blocks_streamed_from_disk_and_host_give_the_same_latents_to_the_bit(weights, monkeypatch):
    """The memory plan's tiers only move weights: the KV cache, the guided passes and Euler see the
    same numbers with each block read from its mapped file or host memory when it runs."""
    from wanflow.memory import pool as model_pool
    from wanflow.memory import streamed

    placed = []
    real = streamed.load_placed_longcat

    def spy(files, tiers, **kwargs):
        model = real(files, tiers, **kwargs)
        placed.append((tuple(tiers), model.placement))
        return model

    monkeypatch.setattr(streamed, "load_placed_longcat", spy)
    model_pool.clear()
    resident = STEP.run(Ctx(PARAMS, _inputs(), weights))["latents"]
    assert placed == []
    model_pool.clear()
    stepped = attrs.evolve(STEP, tiers=("disk", "host"))
    assert torch.equal(stepped.run(Ctx(PARAMS, _inputs(), weights))["latents"], resident)
    assert [tiers for tiers, _ in placed] == [("disk", "host")]
    model_pool.clear()


REFINE_PARAMS = {**PARAMS, "inputs.longcat_refine_steps": 12, "inputs.longcat_refine_strength": 0.9}


def _refine_inputs() -> dict:
    """The prompt, an upscaled clip's latents (8 conditioning + 4 generated frames of 4 x 4: whole
    chunks of the tiny release's block-sparse attention) and its conditioning latents."""
    g = torch.Generator().manual_seed(6)
    clip = torch.randn(1, 16, 12, 4, 4, generator=g)
    return {"pos": {"context": torch.randn(1, 7, 64, generator=g)}, "refine": {"latents": clip},
            "refine-cond": {"latents": clip[:, :, :8] + 0.1}}


def test_a_killed_refinement_resumes_bit_for_bit(weights, monkeypatch):
    from wanflow.steps import longcat_refine
    from wanflow.steps.longcat_refine import LongCatRefineDenoise

    monkeypatch.setattr(longcat_refine, "CHECKPOINT_EVERY", 3)
    step = LongCatRefineDenoise(dit_files=4, z_dim=16, latent_stride=8, conditions=("refine-cond",))
    full = step.run(Ctx(REFINE_PARAMS, _refine_inputs(), weights))["latents"]
    assert full.shape == (1, 16, 12, 4, 4) and torch.equal(full[:, :, :8], _refine_inputs()["refine-cond"]["latents"])
    killed = Ctx(REFINE_PARAMS, _refine_inputs(), weights, stop_after=3)
    with pytest.raises(Stop):
        step.run(killed)
    assert killed.partial[0] == 3
    resumed = Ctx(REFINE_PARAMS, _refine_inputs(), weights, partial=killed.partial)
    assert torch.equal(step.run(resumed)["latents"], full)


def test_a_killed_run_resumes_its_step_cache_bit_for_bit(weights, monkeypatch):
    """The step cache's state is checkpointed with the solver's: a resumed First-Block-Cache run
    skips and adds exactly as the uninterrupted one."""
    monkeypatch.setattr(denoise_longcat, "CHECKPOINT_EVERY", 5)
    params = {**PARAMS, "model": "longcat-video", "sampler.cache.method": "first-block", "sampler.cache.threshold": 0.3,
              **{f"sampler.cache.{k}": v for k, v in (("target_speedup", None), ("mode", "e"),
                                                        ("coefficients", "auto"), ("calibrated", ()),
                                                        ("ratios_cond", ()), ("ratios_uncond", ()),
                                                        ("max_skips", 2), ("retention", 0.2))}}
    full = STEP.run(Ctx(params, _inputs(), weights))["latents"]
    plain = STEP.run(Ctx(PARAMS, _inputs(), weights))["latents"]
    assert not torch.equal(full, plain)  # the cache skipped
    killed = Ctx(params, _inputs(), weights, stop_after=5)
    with pytest.raises(Stop):
        STEP.run(killed)
    assert any(k.startswith("cache.") for k in killed.partial[1])
    resumed = Ctx(params, _inputs(), weights, partial=killed.partial)
    assert torch.equal(STEP.run(resumed)["latents"], full)
