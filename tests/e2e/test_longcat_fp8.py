"""LongCat-Video's DiT with its block projections stored in fp8, and its blocks compiled.

``[memory].fp8`` stores every Linear of LongCat's blocks (fused qkv, proj, q_linear, kv_linear,
the SwiGLU's w1/w2/w3) as float8 e4m3 with one scale per row, as a Wan DiT's; its fp32 islands
(adaLN modulation, time embedding, final layer) stay fp32. The run's denoise equals the same loop
over the DiT loaded that way by hand, stays within fp8's rounding of the bf16-free fp32 run, is
keyed apart, takes LoRAs on the fly, and the memory plan sizes the DiT at its fp8 bytes.
``[runtime].compile = "blocks"`` compiles each block, within float rounding of the eager model.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_longcat import REPO
from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_longcat_runs import _executed

FAMILY = "longcat-video"
SAMPLER = {"solver": "euler", "steps": 2, "shift": 1.0, "cfg": 2.0, "cfg_zero_star": False}


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, fp8: bool, **tables):
    return write_recipe(tmp_path, FAMILY, video={"width": 16, "height": 16, "frames": 9}, sampler=SAMPLER,
                        memory={"fp8": fp8}, **tables)


def _denoised(recipe):
    for _, ex in _executed(recipe):
        return ex.load("denoise")["latents"], ex.load("encode-text:positive")["context"], \
            ex.load("encode-text:negative")["context"]


def _by_hand(dit, pos, neg):
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity
    from wanflow.sampling.schedules import euler_schedule

    schedule, x = euler_schedule(2, 1.0), initial_noise((1, 16, 3, 2, 2), 0, noise_device="cpu")
    for i, t in enumerate(schedule.timesteps):
        with torch.no_grad():
            vc, vu = (flow_velocity(dit(x, t.reshape(1), c)) for c in (pos, neg))
        x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (vu + 2.0 * (vc - vu))
    return x


def test_fp8_storage_is_the_dit_loaded_in_fp8_and_within_its_rounding(longcat_env, longcat_root, tmp_path):
    from wanflow.models.fp8 import fp8_layers
    from wanflow.models.longcat_loader import load_longcat_dit

    ours, pos, neg = _denoised(_recipe(tmp_path, True))
    dit = load_longcat_dit(longcat_root / REPO / "dit", storage="fp8").eval()
    layers = fp8_layers(dit)
    assert sorted(n.split(".", 2)[2] for n in layers if n.startswith("blocks.0.")) == [
        "attn.proj", "attn.qkv", "cross_attn.kv_linear", "cross_attn.proj", "cross_attn.q_linear",
        "ffn.w1", "ffn.w2", "ffn.w3"]
    assert all(layer.weight.dtype == torch.float8_e4m3fn for layer in layers.values())
    assert dit.blocks[0].adaLN_modulation[1].weight.dtype == torch.float32  # an fp32 island
    assert torch.allclose(ours, _by_hand(dit, pos, neg), rtol=1e-5, atol=1e-5)
    (tmp_path / "plain").mkdir()
    plain, _, _ = _denoised(_recipe(tmp_path / "plain", False))
    assert 0 < (ours - plain).norm() / plain.norm() < 0.05  # fp8's rounding, and only that


def test_fp8_is_keyed_and_takes_loras_on_the_fly(longcat_env, tmp_path):
    lora = [{"source": f"modelscope:{REPO}", "file": "lora/cfg_step_lora.safetensors"}]
    plain = run(_recipe(tmp_path, False, lora=lora), longcat_env)
    fp8 = run(_recipe(tmp_path, True, lora=lora), longcat_env)
    assert computed(fp8) == {"denoise", "decode", "save", "save-metadata"}  # the encodes stay hits
    assert computed(plain) >= {"denoise"}
    merged = _denoised(_recipe(tmp_path, False, lora=lora))[0]
    on_the_fly = _denoised(_recipe(tmp_path, True, lora=lora))[0]
    without = _denoised(_recipe(tmp_path, True))[0]
    assert 0 < (on_the_fly - merged).norm() / merged.norm() < 0.02  # fp8 rounding
    assert (on_the_fly - without).norm() / without.norm() > 0.03  # the LoRA applied (beyond fp8 rounding)


def test_the_memory_plan_sizes_the_dit_at_its_fp8_bytes(longcat_env, tmp_path):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    peaks = {}
    for fp8 in (False, True):
        (tmp_path / str(fp8)).mkdir()
        resolved = load_recipe(_recipe(tmp_path / str(fp8), fp8))
        plan = get_registry().pipeline(resolved.model).memory_plan(resolved)
        peaks[fp8] = next(p.host_bytes for p in plan.peaks if p.step == "denoise")  # a CPU run: the DiT in RAM
    assert peaks[True] < peaks[False]


def test_the_dit_s_fp8_size_counts_its_block_projections_at_one_byte(longcat_root):
    from wanflow.memory.sizes import read_headers
    from wanflow.models.longcat_config import keeps_fp32
    from wanflow.steps.longcat_memory import dit_size

    headers = read_headers(sorted((longcat_root / REPO / "dit").glob("*.safetensors")))
    size = dit_size(headers, 2)
    projections = {k: t for k, t in headers.items() if k.startswith("blocks.") and len(t.shape) == 2
                   and not keeps_fp32(k)}
    saved = sum(t.numel * 2 - (t.numel + 4 * t.shape[0]) for t in projections.values())  # bf16 -> fp8 + row scales
    assert len(projections) == 16 and size.weight_bytes - size.as_fp8().weight_bytes == saved


def eager_and_compiled(root):
    """The tiny release's DiT from a fresh pool, eager and with compiled blocks (skips where torch
    cannot compile)."""
    from wanflow.memory import pool as model_pool

    if model_pool.compile_problems("cpu"):
        pytest.skip("torch cannot compile here: " + "; ".join(model_pool.compile_problems("cpu")))
    import torch._dynamo

    torch._dynamo.reset()
    model_pool.clear()
    files = sorted((root / REPO / "dit").glob("*.safetensors"))
    return model_pool.dit(files, torch.float32, "cpu", "sdpa"), model_pool.dit(files, torch.float32, "cpu", "sdpa",
                                                                                 compile_mode="blocks")


def test_compiled_blocks_match_the_eager_dit(longcat_root):
    from wanflow.memory import pool as model_pool

    eager, compiled = eager_and_compiled(longcat_root)
    assert compiled is not eager
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 16, 3, 2, 2, generator=g), torch.randn(1, 5, 64, generator=g)
    with torch.no_grad():
        expected, out = eager(x, torch.tensor([700.0]), context), compiled(x, torch.tensor([700.0]), context)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    model_pool.clear()
