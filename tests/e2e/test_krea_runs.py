"""Krea Realtime end to end on tiny weights in its real file layout, both ways its recipes ship.

``recipes/krea-realtime.toml`` (the authors' block-causal sampler) and
``recipes/krea-realtime-diffsynth.toml`` (DiffSynth's bidirectional Euler) each give an mp4 of the
asked size and frames. The block-causal run's latents and frames equal ``sample_blocks`` driven
directly over the same tiny DiT and VAE, with the re-anchor written out by hand (decode the whole
history, take the pixel frame before the recent context, encode it). A changed prompt re-runs the
text encode and what follows; a changed step count does not re-run the text encode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.e2e._layout_krea import FILE, REPO, write_krea_models_root
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models
from wanflow.engine.cache import Cache
from wanflow.engine.execute import Executor
from wanflow.engine.runner import plan_job
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CAUSAL, DIFFSYNTH = RECIPES / "krea-realtime.toml", RECIPES / "krea-realtime-diffsynth.toml"
#: 32×32 and 33 frames: 9 latent frames, 3 blocks; the third block's context is re-anchored.
TINY = ("video.width=32", "video.height=32", "video.frames=33")
AFTER = {"denoise", "decode", "save", "save-metadata"}


@pytest.fixture(scope="session")
def krea_root(tmp_path_factory):
    return write_krea_models_root(tmp_path_factory.mktemp("krea-models"))


@pytest.fixture()
def krea_env(krea_root, tmp_path, monkeypatch):
    return use_models(krea_root, tmp_path, monkeypatch)


def _executed(recipe: Path, *sets: str) -> Executor:
    """The executor after running the whole plan (every node's output is loadable)."""
    resolved = load_recipe(recipe, sets=sets)
    with Cache() as cache:
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        ex = Executor(plan, cache)
        ex.run()
        return ex


def _reference(krea_root: Path, ex: Executor, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(latents, uint8 frames, re-anchors made) of Krea's block loop driven by hand; ``strength``
    < 1 starts from the run's own source latent."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.causal_stream import CausalWan
    from wanflow.models.dit_loader import load_dit
    from wanflow.output import to_uint8_frames
    from wanflow.sampling.krea import KreaSampling, sample_blocks

    dit = load_dit(krea_root / REPO / FILE)
    vae = model_pool.vae(ex.plan.get("decode").spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
    anchors = []

    def reanchor(history: torch.Tensor, recent: int) -> torch.Tensor:
        pixels = vae.decode(history)  # every decoded frame so far: (1, 3, 1 + 4(s − 1), H, W)
        before = 4 * (history.shape[2] - recent - 1)  # the last pixel frame of latent frame s − recent − 1
        anchors.append(before)
        return vae.encode(pixels[:, :, before:before + 1])

    with torch.no_grad():
        model = CausalWan(dit, ex.load("encode-text:positive")["context"])
        video = ex.load("encode-conditioning:source")["x0"] if strength < 1 else None
        latents = sample_blocks(model, (1, 16, 9, 4, 4), 0, KreaSampling(steps=5, shift=5.0, strength=strength),
                                video=video, reanchor=reanchor)
        frames = torch.from_numpy(to_uint8_frames(vae.decode(latents)[0]))
    return latents, frames, len(anchors)


def test_the_authors_recipe_runs_block_causally_and_equals_the_block_loop(krea_env, krea_root):
    outcome = run(CAUSAL, krea_env, *TINY)
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (33, 32, 32)
    node = outcome.plan.get("denoise").spec
    assert node.step.kind == "denoise-causal"
    assert node.weights["vae"] == outcome.plan.get("decode").spec.weights["vae"]  # the re-anchor's VAE is keyed

    ex = _executed(CAUSAL, *TINY)  # every step a hit: the run's own outputs
    latents, frames, anchors = _reference(krea_root, ex)
    assert anchors == 1  # block 2 (frames 6–8) sees a re-anchored frame
    torch.testing.assert_close(ex.load("denoise")["latents"], latents, rtol=1e-5, atol=1e-5)
    assert torch.equal(ex.load("decode")["frames"], frames)


def test_diffsynths_recipe_runs_the_bidirectional_pipeline(krea_env):
    outcome = run(DIFFSYNTH, krea_env, "video.width=32", "video.height=48", "video.frames=9")
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (9, 32, 48)
    node = outcome.plan.get("denoise").spec
    assert node.step.kind == "denoise" and "vae" not in node.weights
    values = load_recipe(DIFFSYNTH).values
    assert (values["sampler.solver"], values["sampler.steps"], values["sampler.shift"], values["sampler.cfg"],
            values["video.frames"]) == ("euler", 6, 20.0, 1.0, 81)


def test_the_prompt_reruns_the_text_encode_and_the_steps_do_not(krea_env):
    first = run(CAUSAL, krea_env, *TINY)
    assert {"encode-text:positive"} | AFTER <= computed(first)
    assert computed(run(CAUSAL, krea_env, *TINY)) == set()
    assert computed(run(CAUSAL, krea_env, *TINY, "prompt.text=a red kite over a beach")) == \
        {"encode-text:positive"} | AFTER
    assert computed(run(CAUSAL, krea_env, *TINY, "sampler.steps=4")) == AFTER


def test_video_to_video_starts_from_the_kept_source_and_equals_the_block_loop(krea_env, krea_root, tmp_path):
    from wanflow.output import save_mp4

    source = tmp_path / "source.mp4"
    save_mp4(np.random.default_rng(3).integers(0, 256, (33, 32, 32, 3), dtype=np.uint8), source, 8, {}, quality=0)
    sets = (*TINY, f"inputs.video={source}", "sampler.denoising_strength=0.5")
    outcome = run(CAUSAL, krea_env, *sets)
    assert "encode-conditioning:source" in computed(outcome)
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (33, 32, 32)
    ex = _executed(CAUSAL, *sets)
    latents, _, _ = _reference(krea_root, ex, strength=0.5)
    torch.testing.assert_close(ex.load("denoise")["latents"], latents, rtol=1e-5, atol=1e-5)


def test_krea_fine_tunes_as_diffsynth_does_with_the_euler_solver(krea_env, tmp_path):
    from tests.e2e._train import write_dataset, write_train_recipe

    metadata = write_dataset(tmp_path / "data")
    recipe = write_train_recipe(tmp_path, "krea-realtime-video", metadata, steps=2)
    text = recipe.read_text(encoding="utf-8").replace('negative = "blurry"', 'negative = ""')
    recipe.write_text(text.replace("steps = 2\n", 'steps = 2\nsolver = "euler"\ncfg = 1.0\n', 1), encoding="utf-8")
    outcome = run(recipe, krea_env)
    assert "train" in computed(outcome)
    (lora,) = (tmp_path / "runs").rglob("*.safetensors")
    from safetensors.torch import load_file

    trained = load_file(str(lora))
    assert trained and all(".lora_" in k or "lora_" in k for k in trained)
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k or "lora_up" in k)
