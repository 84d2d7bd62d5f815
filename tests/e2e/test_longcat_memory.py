"""LongCat-Video's memory plan end to end, on tiny weights in the release's layout.

`wanflow plan` prints the placement of its DiT (sized whole from its own headers) and each step's
peak; a job under ``offload`` keeps one large model at a time and makes latents bit-identical to
the resident run's (placement never changes the numbers); a budget nothing fits is refused with
the numbers before any model loads (exit 2); the streaming policies are honoured with the same
latents.
"""

from __future__ import annotations

import pytest

from tests.e2e._layout_longcat import CONFIG
from tests.e2e._run import run
from tests.e2e.conftest import use_models, write_recipe

FAMILY = "longcat-video"


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool

    model_pool.clear()
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, **tables):
    return write_recipe(tmp_path, FAMILY, {}, video={"width": 16, "height": 16, "frames": 9}, **tables)


def test_wanflow_plan_prints_longcats_plan_or_refuses_with_the_numbers(longcat_env, tmp_path, capsys):
    from wanflow.cli import main

    recipe = _recipe(tmp_path)
    assert main(["plan", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "memory policy none (auto)" in out and "dit: in RAM" in out and "step denoise: peak host" in out
    assert main(["plan", str(recipe), "--set", 'memory.policy="offload"']) == 0
    assert "dit: read from its file for its step" in capsys.readouterr().out
    assert main(["plan", str(recipe), "--set", "memory.limit_gb=0.0001"]) == 2
    err = capsys.readouterr().err
    assert "step 'denoise' needs" in err and "the cheapest change that fits: a host budget of" in err


def test_a_budget_nothing_fits_is_refused_before_any_model_loads(longcat_env, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool
    from wanflow.memory.planner import MemoryPlanError

    def never(*_args, **_kwargs):
        raise AssertionError("a model loaded")

    monkeypatch.setattr(model_pool, "_get", never)
    with pytest.raises(MemoryPlanError, match=r"memory policy 'offload' under CPU only, host 0\.00 GiB: .*step "
                                              r"'denoise' needs .* of host memory \(offload\).*the cheapest change "
                                              r"that fits: a host budget of"):
        run(_recipe(tmp_path, memory={"policy": "offload", "limit_gb": 0.0001}), longcat_env)


def test_an_offload_run_keeps_one_model_and_makes_the_resident_runs_latents(longcat_env, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool

    outcomes, kept = {}, {}
    for policy in ("none", "offload"):
        monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / f"cache-{policy}"))  # each computes its own
        model_pool.clear()
        outcome = run(_recipe(tmp_path, memory={"policy": policy}), longcat_env)
        assert outcome.plan.get("denoise").spec.step.residency.policy == policy
        assert not outcome.results["denoise"].hit
        outcomes[policy], kept[policy] = outcome, [kind for kind, _ in model_pool.resident()]
    assert {"dit", "text_encoder"} <= set(kept["none"])  # resident: nothing left
    assert sum(kind in model_pool.LARGE_KINDS for kind in kept["offload"]) == 1
    none, offload = (outcomes[p].results["denoise"] for p in ("none", "offload"))
    assert offload.key == none.key and offload.digest == none.digest  # the same latents, to the bit


def test_the_denoise_step_is_planned_at_the_clips_size_with_its_cached_conditioning(longcat_env, tmp_path):
    """Under ``none`` on the CPU each step's peak is every model's weights plus its activations, so
    two steps' peaks differ by their activations: the denoise's are the tiny DiT's forward over the
    13-frame clip's 4 latent frames, of which the 5 conditioning frames' 2 are cached."""
    import numpy as np

    from wanflow.memory.estimates import vae_decode_bytes
    from wanflow.memory.longcat_estimate import longcat_forward_bytes
    from wanflow.output import save_mp4
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    past = tmp_path / "past.mp4"
    save_mp4(np.random.default_rng(0).integers(0, 256, (11, 24, 40, 3), dtype=np.uint8), past, 8, {}, quality=0)
    recipe = write_recipe(tmp_path, FAMILY, {"longcat_video": past}, video={"width": 16, "height": 16, "frames": 13},
                          memory={"policy": "none"})
    plans = {}
    for name, sets in (("continuation", ("inputs.longcat_cond_frames=5",)), ("text-to-video", ("inputs={}",))):
        resolved = load_recipe(recipe, sets=sets)
        found = get_registry().pipeline(resolved.model).memory_plan(resolved)
        peaks = {p.step: p.host_bytes for p in found.peaks}
        plans[name] = peaks["denoise"] - peaks["decode"] + vae_decode_bytes("wan2.1", 96, 13, 16, 16, 4)
    assert plans["continuation"] == longcat_forward_bytes(CONFIG, (4, 2, 2), 4, cond_latents=2)
    assert plans["text-to-video"] == longcat_forward_bytes(CONFIG, (4, 2, 2), 4)


@pytest.mark.parametrize("policy", ["stream", "disk"])
def test_the_streaming_policies_are_honoured_and_make_the_resident_runs_latents(longcat_env, tmp_path, monkeypatch,
                                                                                policy):
    """The CPU run's plan keeps the tiny DiT's blocks resident under either policy (the step-level
    tests stream them); the run is planned, placed and keyed as the resident one."""
    from wanflow.memory import pool as model_pool

    digests = {}
    for asked in ("none", policy):
        monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / f"cache-{asked}"))
        model_pool.clear()
        outcome = run(_recipe(tmp_path, memory={"policy": asked}), longcat_env)
        assert outcome.plan.get("denoise").spec.step.residency.policy == asked
        digests[asked] = (outcome.results["denoise"].key, outcome.results["denoise"].digest)
    assert digests[policy] == digests["none"]
