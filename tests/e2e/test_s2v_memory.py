"""Wan2.2-S2V's DiT with its blocks streamed by the memory plan, or stored in fp8.

Streamed blocks (``memory.streamed.load_placed_s2v``: the audio injectors, audio encoder, frame
packer and pose encoder stay on the device, the blocks move by the placement hooks) give the
resident clip loop's latents to the bit over two clips (the second with motion tokens), and a
LoRA applies on the fly to streamed blocks. ``[memory].fp8`` stores the blocks' projections in
fp8 (the injectors keep the compute dtype): the clip loop equals a hand-driven step through the
DiT loaded that way, stays within fp8's rounding of the plain run, is keyed apart, takes a LoRA
on the fly, and the memory plan sizes it at its fp8 bytes.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.e2e._layout_s2v import REPO, write_s2v_models_root
from tests.e2e._run import computed, run
from tests.e2e.conftest import use_models
from tests.e2e.test_s2v_runs import SAMPLER, _ByHand, _executed, _recipe, write_media

#: One tier per block of the tiny DiT (3 blocks, audio injectors after blocks 0 and 2).
TIERS = ("disk", "device", "host")


@pytest.fixture(scope="module")
def s2v_root(tmp_path_factory):
    return write_s2v_models_root(tmp_path_factory.mktemp("s2v-models"))


@pytest.fixture(scope="module")
def media(tmp_path_factory, images):
    return write_media(tmp_path_factory.mktemp("s2v-inputs"), images)


@pytest.fixture()
def s2v_env(s2v_root, tmp_path, monkeypatch):
    return use_models(s2v_root, tmp_path, monkeypatch)


def _latents(recipe) -> torch.Tensor:
    for _, ex in _executed(recipe):
        return ex.load("denoise")["latents"]


def _streamed(monkeypatch, tmp_path, name: str):
    """Plan every later run with the DiT's blocks in ``TIERS``, in a fresh cache (tiers are in no key)."""
    from wanflow.memory import pool as model_pool
    from wanflow.steps import pipeline

    monkeypatch.setattr(pipeline, "_tiers", lambda plan, dits: (("dit", TIERS),))
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / name))
    model_pool.clear()


def _lora(path, s2v_root) -> list[dict]:
    """A DiffSynth-dialect LoRA on every block's self_attn.q and ffn.0 of the tiny DiT."""
    from wanflow.memory.sizes import read_headers

    shapes = {k: t.shape for k, t in read_headers(sorted((s2v_root / REPO).glob("*.safetensors"))).items()}
    g, tensors = torch.Generator().manual_seed(7), {}
    for i in range(len(TIERS)):
        for name in ("self_attn.q", "ffn.0"):
            out, inn = shapes[f"blocks.{i}.{name}.weight"]
            tensors[f"blocks.{i}.{name}.lora_A.default.weight"] = torch.randn(4, inn, generator=g) * 0.3
            tensors[f"blocks.{i}.{name}.lora_B.default.weight"] = torch.randn(out, 4, generator=g) * 0.3
    save_file(tensors, str(path))
    return [{"path": str(path), "scale": 1.0}]


def test_streamed_blocks_give_the_resident_clip_loop_to_the_bit(s2v_env, media, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool

    recipe = _recipe(tmp_path, media, sampler=SAMPLER)  # two clips: the second reads motion tokens
    model_pool.clear()
    resident = _latents(recipe)
    assert resident.shape[2] == 4  # two clips of two latent frames
    _streamed(monkeypatch, tmp_path, "streamed-cache")
    outcome = run(recipe, s2v_env)
    assert "denoise" in computed(outcome) and outcome.plan.get("denoise").spec.step.tiers == TIERS
    dits = [e.model for k, e in model_pool._POOL.items() if k[0] == "dit"]
    assert dits and all([b.tier for b in d.placement.blocks] == list(TIERS) for d in dits)
    assert torch.equal(_latents(recipe), resident)
    model_pool.clear()


def test_a_lora_applies_on_the_fly_to_streamed_blocks(s2v_env, s2v_root, media, tmp_path, monkeypatch):
    from wanflow.memory import pool as model_pool

    lora = _lora(tmp_path / "lora.safetensors", s2v_root)
    model_pool.clear()
    merged = _latents(_recipe(tmp_path, media, sampler=SAMPLER, lora=lora))
    plain = _latents(_recipe(tmp_path, media, sampler=SAMPLER))
    _streamed(monkeypatch, tmp_path, "streamed-cache")
    on_the_fly = _latents(_recipe(tmp_path, media, sampler=SAMPLER, lora=lora))
    dits = [e.model for k, e in model_pool._POOL.items() if k[0] == "dit"]
    assert dits and all(hasattr(d, "placement") for d in dits)  # streamed, the LoRA attached, not merged
    torch.testing.assert_close(on_the_fly, merged, rtol=1e-5, atol=1e-5)  # merged vs on the fly: float rounding
    assert (on_the_fly - plain).abs().max() > 1e-3  # the LoRA acts on the streamed blocks
    model_pool.clear()


def test_fp8_storage_is_the_dit_loaded_in_fp8_and_within_its_rounding(s2v_env, s2v_root, media, tmp_path):
    from wanflow.memory import pool as model_pool
    from wanflow.models.fp8 import fp8_layers
    from wanflow.models.s2v_loader import load_s2v_dit

    model_pool.clear()
    dit = load_s2v_dit(s2v_root / REPO, storage="fp8").eval()
    layers = fp8_layers(dit)
    assert sorted(n.split(".", 2)[2] for n in layers if n.startswith("blocks.0.")) == [
        "cross_attn.k", "cross_attn.o", "cross_attn.q", "cross_attn.v", "ffn.0", "ffn.2",
        "self_attn.k", "self_attn.o", "self_attn.q", "self_attn.v"]
    assert len(layers) == 10 * len(dit.blocks)  # the blocks' projections, and only theirs
    assert all(layer.weight.dtype == torch.float8_e4m3fn for layer in layers.values())
    assert all(not n.startswith(("audio_injector", "casual_audio_encoder")) for n in layers)
    recipe = _recipe(tmp_path, media, audio="short", sampler=SAMPLER, memory={"fp8": True})
    for resolved, ex in _executed(recipe):
        hand = _ByHand(s2v_root, ex, resolved)
        hand.dit = dit
        ours = ex.load("denoise")["latents"]
        torch.testing.assert_close(ours, hand.clip(0, motion=None), rtol=1e-5, atol=1e-6)
    (tmp_path / "plain").mkdir()
    plain = _latents(_recipe(tmp_path / "plain", media, audio="short", sampler=SAMPLER))
    assert 1e-3 < (ours - plain).norm() / plain.norm() < 0.05  # fp8's rounding, and only that
    model_pool.clear()


def test_fp8_is_keyed_and_takes_a_lora_on_the_fly(s2v_env, s2v_root, media, tmp_path):
    from wanflow.memory import pool as model_pool

    model_pool.clear()
    lora = _lora(tmp_path / "lora.safetensors", s2v_root)
    recipe = _recipe(tmp_path, media, audio="short", sampler=SAMPLER, lora=lora)
    plain = run(recipe, s2v_env)
    fp8 = run(recipe, s2v_env, "memory.fp8=true")
    assert computed(fp8) == {"denoise", "save", "save-metadata"}  # the encodes stay hits
    assert fp8.results["denoise"].key != plain.results["denoise"].key
    merged = _latents(recipe)
    (tmp_path / "fp8").mkdir()
    on_the_fly = _latents(_recipe(tmp_path / "fp8", media, audio="short", sampler=SAMPLER, lora=lora,
                                  memory={"fp8": True}))
    (tmp_path / "bare").mkdir()
    without = _latents(_recipe(tmp_path / "bare", media, audio="short", sampler=SAMPLER, memory={"fp8": True}))
    error = (on_the_fly - merged).norm() / merged.norm()
    assert 1e-3 < error < 0.05  # fp8 rounding, beyond float rounding
    assert (on_the_fly - without).norm() / without.norm() > 3 * error  # the LoRA acts on the fp8 blocks
    model_pool.clear()


def test_the_memory_plan_streams_the_dit_and_sizes_it_at_its_fp8_bytes(s2v_env, media, tmp_path):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    def plan_of(folder, **memory):
        folder.mkdir()
        resolved = load_recipe(_recipe(folder, media, memory=memory))
        return get_registry().pipeline(resolved.model).memory_plan(resolved)

    plain, fp8 = plan_of(tmp_path / "plain"), plan_of(tmp_path / "fp8", fp8=True)
    peak = {name: next(p.host_bytes for p in found.peaks if p.step == "denoise")
            for name, found in (("plain", plain), ("fp8", fp8))}
    assert peak["fp8"] < peak["plain"]  # a CPU run: the DiT in RAM
    assert len(plain.placement("dit").blocks) == 3 and len(fp8.placement("dit").blocks) == 3  # fp8 blocks stream too
