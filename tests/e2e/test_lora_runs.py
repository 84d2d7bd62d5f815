"""[[lora]] through the real pipeline: what it changes, what stays cached, and what it equals.

The tiny family's DiT gets a LoRA written in the DiffSynth/PEFT dialect by hand; a run with it
equals a run of a DiT checkpoint whose weights had the same delta added by hand, a sweep over
its scale re-runs only denoise and after, and the plain DiT pooled by an earlier job is never
patched by a later one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import wanflow
from tests.e2e._run import computed, run
from wanflow.engine.cache import Cache
from wanflow.engine.execute import Executor
from wanflow.errors import ModelLoadError
from wanflow.memory import pool as model_pool

TINY_DIT = Path(wanflow.__file__).parent / "assets" / "wanflow-tiny" / "dit"
TARGETS = ("blocks.0.self_attn.q", "blocks.1.cross_attn.v", "blocks.0.ffn.0")
RANK = 4


def factors() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module -> (down (r, in), up (out, r)) for a few of the tiny DiT's Linear layers."""
    shapes = load_file(TINY_DIT / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(11)
    out = {}
    for module in TARGETS:
        w = shapes[f"{module}.weight"]
        out[module] = (torch.randn(RANK, w.shape[1], generator=g) * 0.2,
                       torch.randn(w.shape[0], RANK, generator=g) * 0.2)
    return out


def write_diffsynth_lora(path: Path) -> Path:
    """DiffSynth's own dialect: ``<module>.lora_A.default.weight`` / ``lora_B``, no alpha."""
    tensors = {}
    for module, (down, up) in factors().items():
        tensors[f"{module}.lora_A.default.weight"] = down.contiguous()
        tensors[f"{module}.lora_B.default.weight"] = up.contiguous()
    save_file(tensors, str(path))
    return path


def write_patched_dit(folder: Path, scale: float) -> Path:
    """The tiny DiT with scale·(up @ down) added to each target weight by hand (fp32)."""
    shutil.copytree(TINY_DIT, folder)
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    for module, (down, up) in factors().items():
        state[f"{module}.weight"] = state[f"{module}.weight"] + scale * (up @ down)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def recipe(folder: Path, body: str = "", name: str = "tinylora") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\nmodel = "wanflow-tiny"\n[prompt]\ntext = "a red ball"\n'
                    f'[sampler]\nseed = 3\nsteps = 3\ncfg = 3.0\n{body}', encoding="utf-8")  # guided: a negative encode too
    return path


@pytest.fixture()
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    model_pool.clear()
    yield tmp_path / "runs"
    model_pool.clear()


def denoised(outcome) -> torch.Tensor:
    """The denoise output of a finished run, read back from the cache."""
    from wanflow.engine.store import bytes_to_tensors

    with Cache() as cache:
        data = cache.store.get(outcome.results["denoise"].digest)
    return bytes_to_tensors(data)["latents"]


def test_a_lora_run_equals_the_dit_with_the_delta_added_by_hand(tmp_path, cache_env):
    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    with_lora = run(recipe(tmp_path, f'[[lora]]\npath = "{lora}"\nscale = 0.7\n'), cache_env)
    patched = write_patched_dit(tmp_path / "patched-dit", 0.7)
    by_hand = run(recipe(tmp_path, f'[models.dit]\nsource = "{patched}"\nfiles = ["*"]\n', "byhand"), cache_env)
    plain = run(recipe(tmp_path, name="plain"), cache_env)
    ours, expected, base = denoised(with_lora), denoised(by_hand), denoised(plain)
    assert not torch.allclose(expected, base, atol=1e-4)  # the delta matters
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_a_sweep_over_lora_scales_shares_the_text_encodes(tmp_path, cache_env):
    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    first = run(recipe(tmp_path, f'[[lora]]\npath = "{lora}"\nscale = 0.5\n'), cache_env)
    second = run(recipe(tmp_path, f'[[lora]]\npath = "{lora}"\nscale = 1.0\n'), cache_env)
    assert {"encode-text:positive", "encode-text:negative"} <= computed(first)
    assert computed(second) == {"denoise", "decode", "save", "save-metadata"}
    assert denoised(first).ne(denoised(second)).any()


def test_the_pooled_plain_dit_is_never_patched(tmp_path, cache_env, monkeypatch):
    """With every model kept resident (policy none), a LoRA job after a plain one must not patch
    the plain DiT in the pool: a plain job computed afresh afterwards gives the first's output."""
    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    keep = '[memory]\npolicy = "none"\n'
    first = denoised(run(recipe(tmp_path, keep, "plain"), cache_env))
    run(recipe(tmp_path, keep + f'[[lora]]\npath = "{lora}"\n', "withlora"), cache_env)
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "fresh-cache"))  # denoise runs again
    again = run(recipe(tmp_path, keep, "plain"), cache_env)
    assert "denoise" in computed(again)
    assert torch.equal(denoised(again), first)


def test_a_lora_for_another_model_is_refused_before_anything_loads(tmp_path, cache_env, monkeypatch):
    bad = tmp_path / "wide.safetensors"
    save_file({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(4, 1536),
               "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(1536, 4)}, str(bad))

    def never(*_):
        raise AssertionError("a step ran")

    monkeypatch.setattr(Executor, "run", never)
    with pytest.raises(ModelLoadError, match="1.3B"):
        run(recipe(tmp_path, f'[[lora]]\npath = "{bad}"\n'), cache_env)


def test_a14b_scales_per_expert(env, tmp_path):
    """A LoRA on A14B patches both experts, each at its own scale; 0 leaves an expert alone, and an
    expert's name targets that expert only. The text encodes never depend on a LoRA."""
    from tests.e2e.conftest import write_recipe
    from tests.e2e.test_key_identity import planned, static_keys

    lora = tmp_path / "distill.safetensors"
    save_file({"blocks.0.self_attn.q.lora_A.default.weight": torch.ones(4, 128),
               "blocks.0.self_attn.q.lora_B.default.weight": torch.ones(128, 4)}, str(lora))
    for sub in ("plain", "both", "low"):
        (tmp_path / sub).mkdir()
    plain = write_recipe(tmp_path / "plain", "wan2.2-t2v-a14b")
    both = write_recipe(tmp_path / "both", "wan2.2-t2v-a14b", lora=[{"path": str(lora), "scale": 0.5,
                                                             "scale_low_noise": 0.0}])
    nodes = {s.name: s for s in planned(both).steps}
    assert nodes["denoise"].config["loras"] == (("lora.0", "dit_high_noise", 0.5),)
    assert "lora.0" in nodes["denoise"].weights
    high = write_recipe(tmp_path / "low", "wan2.2-t2v-a14b", lora=[{"path": str(lora), "target": "dit_low_noise"}])
    low_only = {s.name: s for s in planned(high).steps}["denoise"].config["loras"]
    assert low_only == (("lora.0", "dit_low_noise", 1.0),)
    a, b = static_keys(planned(plain)), static_keys(planned(both))
    assert a["encode-text:positive"] == b["encode-text:positive"] and a["denoise"] != b["denoise"]


def test_fp8_storage_runs_with_a_lora_applied_on_the_fly(tmp_path, cache_env):
    """fp8 block weights: the LoRA is attached (a merge would vanish in fp8's rounding), and the
    result stays near the full-precision run with the same LoRA (fp8's own error, a few %)."""
    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    body = f'[[lora]]\npath = "{lora}"\nscale = 0.7\n'
    full = denoised(run(recipe(tmp_path, body, "full"), cache_env))
    fp8 = denoised(run(recipe(tmp_path, body + "[memory]\nfp8 = true\n", "fp8"), cache_env))
    plain_fp8 = denoised(run(recipe(tmp_path, "[memory]\nfp8 = true\n", "plainfp8"), cache_env))
    err = ((fp8 - full).abs().max() / full.abs().max()).item()
    moved = ((fp8 - plain_fp8).abs().max() / full.abs().max()).item()
    assert 0 < err < 0.15 and moved > 3 * err  # fp8 is close (max error, guidance 3), and the LoRA really acts


def test_fp8_matmuls_run_with_a_lora_applied_on_the_fly(tmp_path, cache_env):
    """[runtime].fp8_matmul: the block projections multiply in fp8 under an attached LoRA; the video
    stays near the full-precision one, differs from fp8 storage alone (the activations are rounded
    too), and the LoRA still acts."""
    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    body = f'[[lora]]\npath = "{lora}"\nscale = 0.7\n'
    fp8 = "[memory]\nfp8 = true\n[runtime]\nfp8_matmul = true\n"
    full = denoised(run(recipe(tmp_path, body, "full"), cache_env))
    stored = denoised(run(recipe(tmp_path, body + "[memory]\nfp8 = true\n", "stored"), cache_env))
    multiplied = denoised(run(recipe(tmp_path, body + fp8, "multiplied"), cache_env))
    plain = denoised(run(recipe(tmp_path, fp8, "plain"), cache_env))
    err = ((multiplied - full).abs().max() / full.abs().max()).item()
    moved = ((multiplied - plain).abs().max() / full.abs().max()).item()
    assert not torch.equal(multiplied, stored)
    assert 0 < err < 0.15 and moved > 3 * err


def test_blocks_streamed_by_the_memory_plan_give_the_same_video(tmp_path, cache_env, monkeypatch):
    """The pool loads a DiT whose blocks the plan puts on disk or in host memory through the
    placement hooks; placement never changes the numbers (it is in no key): without a LoRA the
    denoised latents of a fresh run are bit-identical, and a LoRA (then applied on the fly, since a
    streamed block is read again from its file) agrees with the merged one within its tolerance."""
    from wanflow.steps import pipeline

    lora = write_diffsynth_lora(tmp_path / "style.safetensors")
    with_lora = f'[[lora]]\npath = "{lora}"\nscale = 0.7\n'
    resident = denoised(run(recipe(tmp_path, "", "resident"), cache_env))
    resident_lora = denoised(run(recipe(tmp_path, with_lora, "resident-lora"), cache_env))
    config = Path(wanflow.__file__).parent / "assets" / "wanflow-tiny" / "dit" / "config.json"
    tiers = tuple(("disk", "host")[i % 2] for i in range(json.loads(config.read_text())["num_layers"]))
    monkeypatch.setattr(pipeline, "_tiers", lambda plan, dits: (("dit", tiers),))
    model_pool.clear()
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "fresh-cache"))
    streamed = run(recipe(tmp_path, "", "streamed"), cache_env)
    assert "denoise" in computed(streamed)
    assert any(hasattr(e.model, "placement") for e in model_pool._POOL.values()), "not placed"
    assert torch.equal(denoised(streamed), resident)
    streamed_lora = denoised(run(recipe(tmp_path, with_lora, "streamed-lora"), cache_env))
    torch.testing.assert_close(streamed_lora, resident_lora, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(streamed_lora, resident, atol=1e-3)
