"""Wan2.2-Animate's DiT with its blocks streamed by the memory plan, or stored in fp8.

Streamed blocks (``memory.streamed.load_placed_animate``: the face blocks and encoders stay on
the device, the main blocks move by the placement hooks) give the resident run's latents to the
bit, the face encode loads the DiT in the same tiers (never whole), and replacement's relighting
LoRA applies on the fly to streamed blocks. ``[memory].fp8`` stores the main blocks' projections
in fp8 (the face blocks keep the compute dtype): the clip loop equals a hand-driven step through
the DiT loaded that way, stays within fp8's rounding of the plain run, is keyed apart, takes the
relighting LoRA on the fly, and the memory plan sizes it at its fp8 bytes; its fp8 blocks stream
too, giving the fp8 resident run's latents to the bit.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_animate import REPO, write_animate_models_root
from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models
from tests.e2e.test_animate_runs import _executed, hand_driven_step, recipe, write_media
from wanflow.steps.cond_animate import FACE


@pytest.fixture(scope="module")
def animate_root(tmp_path_factory):
    return write_animate_models_root(tmp_path_factory.mktemp("animate-models"))


@pytest.fixture(scope="module")
def media(tmp_path_factory, images):
    return write_media(tmp_path_factory.mktemp("animate-inputs"), images)


@pytest.fixture()
def animate_env(animate_root, tmp_path, monkeypatch):
    return use_models(animate_root, tmp_path, monkeypatch)


#: One tier per block of the tiny DiT (5 blocks, a face block after block 0).
TIERS = ("disk", "host", "device", "disk", "host")
ONE_STEP = {"solver": "euler", "steps": 1, "shift": 5.0, "cfg": 4.0}


def _latents(path) -> torch.Tensor:
    for _, ex in _executed(path):
        return ex.load("denoise")["latents"]


def _streamed(monkeypatch, tmp_path, name: str):
    """Plan every later run with the DiT's blocks in ``TIERS``, in a fresh cache (tiers are in no key)."""
    from wanflow.memory import pool as model_pool
    from wanflow.steps import pipeline

    monkeypatch.setattr(pipeline, "_tiers", lambda plan, dits: (("dit", TIERS),))
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / name))
    model_pool.clear()


def _placed_dits() -> list:
    from wanflow.memory import pool as model_pool

    return [e.model for k, e in model_pool._POOL.items() if k[0] == "dit"]


def test_streamed_blocks_give_the_resident_latents_to_the_bit(animate_env, media, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool

    path = recipe(tmp_path, media, sampler=ONE_STEP)
    model_pool.clear()
    resident = _latents(path)
    _streamed(monkeypatch, tmp_path, "streamed-cache")
    outcome = run(path, animate_env)
    assert "denoise" in computed(outcome) and FACE in computed(outcome)
    assert outcome.plan.get(FACE).spec.step.tiers == TIERS  # the face encode loads the DiT as the loop does
    dits = _placed_dits()
    assert dits and all([b.tier for b in d.placement.blocks] == list(TIERS) for d in dits)  # never loaded whole
    assert torch.equal(_latents(path), resident)
    model_pool.clear()


def test_replacement_applies_the_relighting_lora_on_the_fly_to_streamed_blocks(animate_env, media, tmp_path,
                                                                               monkeypatch):
    from wanflow.memory import pool as model_pool

    path = recipe(tmp_path, media, mode="replacement", sampler=ONE_STEP)
    model_pool.clear()
    merged = _latents(path)
    _streamed(monkeypatch, tmp_path, "streamed-cache")
    on_the_fly = _latents(path)
    dits = [e.model for k, e in model_pool._POOL.items() if k[0] == "dit"]
    assert dits and all(hasattr(d, "placement") for d in dits)  # streamed, the LoRA attached, not merged
    (tmp_path / "plain").mkdir()
    without = _latents(recipe(tmp_path / "plain", media, mode="replacement", sampler=ONE_STEP,
                              inputs={"relighting_lora": False}))
    torch.testing.assert_close(on_the_fly, merged, rtol=1e-5, atol=1e-5)  # merged vs on the fly: float rounding
    assert (on_the_fly - without).abs().max() > 1e-3  # the LoRA acts on the streamed blocks
    model_pool.clear()


def test_fp8_storage_is_the_dit_loaded_in_fp8_and_within_its_rounding(animate_env, animate_root, media, tmp_path):
    from wanflow.memory import pool as model_pool
    from wanflow.models.animate_loader import load_animate_files
    from wanflow.models.fp8 import fp8_layers

    model_pool.clear()
    files = sorted((animate_root / REPO).glob("diffusion_pytorch_model-*.safetensors"))
    dit = load_animate_files(files, storage="fp8").eval()
    layers = fp8_layers(dit)
    assert sorted(n.split(".", 2)[2] for n in layers if n.startswith("blocks.0.")) == [
        "cross_attn.k", "cross_attn.k_img", "cross_attn.o", "cross_attn.q", "cross_attn.v", "cross_attn.v_img",
        "ffn.0", "ffn.2", "self_attn.k", "self_attn.o", "self_attn.q", "self_attn.v"]
    assert all(layer.weight.dtype == torch.float8_e4m3fn for layer in layers.values())
    assert len(layers) == 12 * len(dit.blocks)  # the main blocks' projections, and only theirs
    assert dit.face_adapter.fuser_blocks[0].linear1_q.weight.dtype == torch.float32  # the face blocks' kept
    crops = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():  # the face encode is not keyed by the storage: its tokens are the same bits
        assert torch.equal(dit.prepare_face(crops).tokens, load_animate_files(files).prepare_face(crops).tokens)
    path = recipe(tmp_path, media, sampler=ONE_STEP, memory={"fp8": True})
    for _, ex in _executed(path):
        ours = ex.load("denoise")["latents"]
        torch.testing.assert_close(ours, hand_driven_step(dit, animate_root, media, ex, 4.0), rtol=1e-5, atol=1e-5)
    (tmp_path / "plain").mkdir()
    plain = _latents(recipe(tmp_path / "plain", media, sampler=ONE_STEP))
    assert 1e-3 < (ours - plain).norm() / plain.norm() < 0.05  # fp8's rounding, and only that
    model_pool.clear()


def test_fp8_is_keyed_and_takes_the_relighting_lora_on_the_fly(animate_env, media, tmp_path):
    from wanflow.memory import pool as model_pool

    model_pool.clear()
    path = recipe(tmp_path, media, mode="replacement", sampler=ONE_STEP)
    plain = run(path, animate_env)
    fp8 = run(path, animate_env, "memory.fp8=true")
    assert computed(fp8) == {"denoise", "decode", "save", "save-metadata"}  # the encodes stay hits
    assert fp8.results["denoise"].key != plain.results["denoise"].key
    merged = _latents(path)
    (tmp_path / "fp8").mkdir()
    on_the_fly = _latents(recipe(tmp_path / "fp8", media, mode="replacement", sampler=ONE_STEP, memory={"fp8": True}))
    (tmp_path / "bare").mkdir()
    without = _latents(recipe(tmp_path / "bare", media, mode="replacement", sampler=ONE_STEP, memory={"fp8": True},
                              inputs={"relighting_lora": False}))
    assert 1e-3 < (on_the_fly - merged).norm() / merged.norm() < 0.05  # fp8 rounding, beyond float rounding
    assert (on_the_fly - without).norm() / without.norm() > 3 * (on_the_fly - merged).norm() / merged.norm()
    model_pool.clear()


def test_the_memory_plan_streams_the_dit_and_sizes_it_at_its_fp8_bytes(animate_env, media, tmp_path):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    def plan_of(folder, **memory):
        folder.mkdir()
        resolved = load_recipe(recipe(folder, media, memory=memory))
        return get_registry().pipeline(resolved.model).memory_plan(resolved)

    plain, fp8 = plan_of(tmp_path / "plain"), plan_of(tmp_path / "fp8", fp8=True)
    peak = {name: next(p.host_bytes for p in found.peaks if p.step == "denoise")
            for name, found in (("plain", plain), ("fp8", fp8))}
    assert peak["fp8"] < peak["plain"]  # a CPU run: the DiT in RAM
    assert len(plain.placement("dit").blocks) == 5 and len(fp8.placement("dit").blocks) == 5  # fp8 blocks stream too


@pytest.mark.parametrize("mode", ["animation", "replacement"])  # replacement: its relighting LoRA, attached
def test_streamed_fp8_blocks_give_the_resident_fp8_latents_to_the_bit(animate_env, media, tmp_path, monkeypatch,
                                                                      mode):
    """fp8 main blocks streamed from host memory and disk (``memory.fp8_placed``) reach the same
    kernels with the same bytes as the fp8 DiT loaded whole: the same key, the same latents."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.fp8 import fp8_layers

    path = recipe(tmp_path, media, mode=mode, sampler=ONE_STEP, memory={"fp8": True})
    model_pool.clear()
    resident = run(path, animate_env)
    _streamed(monkeypatch, tmp_path, "streamed-cache")
    streamed = run(path, animate_env)
    assert "denoise" in computed(streamed)
    dits = _placed_dits()
    assert dits and all([b.tier for b in d.placement.blocks] == list(TIERS) and fp8_layers(d) for d in dits)
    assert streamed.results["denoise"].key == resident.results["denoise"].key  # placement is in no key
    assert streamed.results["denoise"].digest == resident.results["denoise"].digest  # the same latents, to the bit
    model_pool.clear()
