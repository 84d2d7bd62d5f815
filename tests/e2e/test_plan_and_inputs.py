"""Plans of the image families, video-to-video, and bad input refused before denoising."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e._layout import REPOS
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import write_recipe
from wanflow.engine.plan import plan
from wanflow.engine.execute import Executor
from wanflow.errors import ModelLoadError, RecipeError
from wanflow.plugins import get_registry
from wanflow.recipe import load_recipe


def planned(recipe, *sets: str) -> dict:
    resolved = load_recipe(recipe, sets=sets)
    return {s.name: s for s in plan(resolved.values, get_registry().pipeline(resolved.model).steps(resolved), "t", str).steps}


def same(a, b) -> bool:
    return a.params == b.params and a.config == b.config and a.files == b.files and a.weights == b.weights


def test_i2v_prompt_and_tiling_changes_rekey_only_their_readers(env, images, tmp_path):
    recipe = write_recipe(tmp_path, "wan2.1-i2v-14b-480p", {"image": images["first"]})
    base = planned(recipe)
    assert dict(base["denoise"].spec.inputs) == {
        "pos": "encode-text:positive", "neg": "encode-text:negative", "clip": "encode-image",
        "y": "encode-conditioning:image"}
    prompt = planned(recipe, "prompt.text=a cat")
    assert not same(base["encode-text:positive"], prompt["encode-text:positive"])
    assert same(base["encode-image"], prompt["encode-image"])
    assert same(base["encode-conditioning:image"], prompt["encode-conditioning:image"])
    tiles = planned(recipe, "vae.tile_size=[2, 2]", "vae.tile_stride=[1, 1]")
    assert not same(base["encode-conditioning:image"], tiles["encode-conditioning:image"])
    assert not same(base["decode"], tiles["decode"])
    assert same(base["encode-image"], tiles["encode-image"])
    assert same(base["encode-text:positive"], tiles["encode-text:positive"])
    dtype = planned(recipe, "runtime.dtype=bf16")
    assert {n for n in base if not same(base[n], dtype[n])} == set(base) - {"save-frames"}


def test_flf2v_encodes_both_frames(env, images, tmp_path):
    inputs = {"image": images["first"], "end_image": images["last"]}
    recipe = write_recipe(tmp_path, "wan2.1-flf2v-14b-720p", inputs)
    nodes = planned(recipe)
    assert set(nodes["encode-image"].files) == {"image", "end_image"}
    assert nodes["encode-conditioning:image"].spec.step.roles == ("image", "end_image")


def test_a14b_guidance_decides_the_negative_node(env, tmp_path):
    recipe = write_recipe(tmp_path, "wan2.2-t2v-a14b")
    nodes = planned(recipe, "sampler.cfg=1.0", "sampler.cfg_high_noise=4.0")
    assert "encode-text:negative" in nodes
    assert {w.split(".")[0] for w in nodes["denoise"].weights} == {"dit_high_noise", "dit_low_noise"}
    assert "encode-text:negative" not in planned(recipe, "sampler.cfg=1.0", "sampler.cfg_high_noise=1.0")


def test_a_dit_of_another_variant_is_refused_at_planning(env, models_root, tmp_path):
    i2v = models_root / "Wan-AI" / REPOS["wan2.1-i2v-14b-480p"].name
    recipe = write_recipe(tmp_path, "wan2.1-t2v-1.3b", models={"dit": {"source": str(i2v)}})
    with pytest.raises(ModelLoadError) as err:
        planned(recipe)
    text = str(err.value)
    assert "[models.dit]" in text and "diffusion_pytorch_model-00001-of-00002.safetensors" in text
    assert "needs a Wan T2V DiT (wan2.1-t2v-1.3b)" in text and "Wan2.1 I2V DiT" in text


def test_an_unreadable_image_is_refused_before_any_step_runs(env, tmp_path, monkeypatch):
    bad = tmp_path / "photo.png"
    bad.write_text("not an image")
    recipe = write_recipe(tmp_path, "wan2.2-i2v-a14b", {"image": bad})

    def never(*_):
        raise AssertionError("a step ran")

    monkeypatch.setattr(Executor, "run", never)
    with pytest.raises(RecipeError, match="photo.png"):
        run(recipe, env)


def test_video_to_video_for_a_text_family(env, tmp_path):
    from wanflow.output import save_mp4

    rng = np.random.default_rng(0)
    source = tmp_path / "source.mp4"
    save_mp4(rng.integers(0, 256, (6, 40, 48, 3), dtype=np.uint8), source, 8, {})
    recipe = write_recipe(tmp_path, "wan2.1-t2v-1.3b", {"video": source}, sampler={"denoising_strength": 0.5})
    outcome = run(recipe, env)
    assert "encode-conditioning:source" in computed(outcome)
    assert dict(outcome.plan.get("denoise").spec.inputs)["x0"] == "encode-conditioning:source"
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (5, 32, 32)
