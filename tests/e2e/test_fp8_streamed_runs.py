"""fp8-stored DiT blocks streamed by the memory policy, through the real pipeline.

A run whose memory plan streams the fp8 blocks (from disk, or host memory) denoises to the latents
of the run that keeps the fp8 DiT whole, to the bit, under the same step key (placement is in no
key): from the bf16 checkpoint (quantised at load for the host tier, at each read for the disk
tier) and from the scaled-fp8 checkpoint converted from it (its fp8 bytes read as they are); a
LoRA, attached on the fly under fp8, acts the same on streamed blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.e2e import test_lora_runs
from tests.e2e._run import computed, run
from tests.e2e.test_lora_runs import TINY_DIT, denoised, recipe, write_diffsynth_lora
from wanflow.memory import pool as model_pool

FP8 = "[memory]\nfp8 = true\n"
#: Tiny enough that a CPU run's plan under a 0.015 GiB budget streams 3 of the DiT's 4 blocks from disk.
SMALL = "[video]\nwidth = 16\nheight = 16\nframes = 1\n"
cache_env = test_lora_runs.cache_env  # a cache of its own per test, the model pool cleared around it


def _placed() -> list:
    return [e.model for k, e in model_pool._POOL.items() if k[0] == "dit" and hasattr(e.model, "placement")]


def _fresh(tmp_path: Path, monkeypatch, name: str) -> None:
    """Later runs compute anew (placement is in no key, so a shared cache would hit)."""
    model_pool.clear()
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / name))


def test_a_plan_that_streams_fp8_blocks_from_disk_makes_the_resident_fp8_latents(tmp_path, cache_env, monkeypatch):
    resident = run(recipe(tmp_path, FP8 + SMALL, "resident"), cache_env)
    _fresh(tmp_path, monkeypatch, "streamed-cache")
    body = FP8 + 'policy = "disk"\nlimit_gb = 0.015\n' + SMALL
    streamed = run(recipe(tmp_path, body, "resident"), cache_env)
    assert "denoise" in computed(streamed)
    tiers = streamed.plan.get("denoise").spec.step.tiers
    assert tiers and "disk" in dict(tiers)["dit"]  # the real plan streamed blocks
    assert [b.tier for b in _placed()[0].placement.blocks] == list(dict(tiers)["dit"])
    assert streamed.results["denoise"].key == resident.results["denoise"].key
    assert torch.equal(denoised(streamed), denoised(resident))


@pytest.fixture()
def scaled_dit(tmp_path):
    """The tiny DiT converted to a scaled-fp8 checkpoint (fp8 bytes and a scale per row)."""
    from wanflow.models.fp8_convert import convert_to_fp8

    folder = tmp_path / "scaled-fp8-dit"
    convert_to_fp8(TINY_DIT / "diffusion_pytorch_model.safetensors", folder)
    (folder / "config.json").write_text((TINY_DIT / "config.json").read_text(), encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", ["bf16", "scaled-fp8"])
def test_fp8_blocks_streamed_from_host_and_disk_make_the_resident_fp8_latents(tmp_path, cache_env, monkeypatch,
                                                                              scaled_dit, kind):
    from wanflow.steps import pipeline

    body = FP8 + (f'[models.dit]\nsource = "{scaled_dit}"\nfiles = ["*"]\n' if kind == "scaled-fp8" else "")
    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    with_lora = body + f'[[lora]]\npath = "{lora}"\nscale = 0.7\n'
    resident, resident_lora = (run(recipe(tmp_path, b, n), cache_env) for b, n in ((body, "a"), (with_lora, "b")))
    layers = json.loads((TINY_DIT / "config.json").read_text())["num_layers"]
    tiers = tuple(("disk", "host")[i % 2] for i in range(layers))
    monkeypatch.setattr(pipeline, "_tiers", lambda plan, dits: (("dit", tiers),))
    _fresh(tmp_path, monkeypatch, "streamed-cache")
    streamed = run(recipe(tmp_path, body, "a"), cache_env)
    assert [b.tier for b in _placed()[0].placement.blocks] == list(tiers)
    streamed_lora = run(recipe(tmp_path, with_lora, "b"), cache_env)
    for ours, want in ((streamed, resident), (streamed_lora, resident_lora)):
        assert "denoise" in computed(ours) and ours.results["denoise"].key == want.results["denoise"].key
        assert torch.equal(denoised(ours), denoised(want))
    assert not torch.allclose(denoised(streamed_lora), denoised(streamed), atol=1e-3)  # the LoRA acts
