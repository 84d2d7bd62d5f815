"""``[runtime].compile = "blocks"`` through the speech-to-video clip loop: the S2V DiT's blocks are
compiled, the video is the eager run's within compile tolerance, and the setting is keyed."""

from __future__ import annotations

import pytest

from tests.e2e import test_s2v_memory as s2v_memory
from tests.e2e._run import computed, run
from tests.e2e.test_lora_runs import denoised
from tests.e2e.test_s2v_runs import _recipe
from wanflow.memory import pool as model_pool

s2v_root, media, s2v_env = s2v_memory.s2v_root, s2v_memory.media, s2v_memory.s2v_env  # the S2V memory tests' fixtures


def test_a_compiled_s2v_run_is_the_eager_one_within_compile_tolerance_under_its_own_key(s2v_env, media,
                                                                                          tmp_path, monkeypatch):
    if model_pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(model_pool.compile_problems("cpu")))
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    recipe = _recipe(tmp_path, media, audio="short", runtime={"device": "cpu"})
    model_pool.clear()
    eager = run(recipe, s2v_env)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = run(recipe, s2v_env, "runtime.compile=blocks")
        assert counters["stats"]["unique_graphs"] >= 1  # the clip loop's DiT blocks really compiled
    finally:
        model_pool.clear()
    assert "denoise" in computed(compiled)
    assert compiled.results["denoise"].key != eager.results["denoise"].key  # compile is keyed
    want, got = denoised(eager), denoised(compiled)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * want.abs().max().item())
