"""Video-As-Prompt end to end on tiny weights in the release's layout.

A run gives an mp4 of the requested size and frames; its denoise step equals one Euler step
driven by hand through the tiny VapDiT with the run's own encodes (the wiring: which latents,
captions and CLIP tokens reach which stream, and the negative reference caption in the
unconditional pass); a new reference video or caption re-runs only its own encode and what
follows.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from tests.e2e._layout_vap import REPO, write_vap_models_root
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe

FAMILY = "video-as-prompt-wan2.1-14b"
AFTER = {"denoise", "decode", "save", "save-metadata"}
ENCODES = {"encode-text:positive", "encode-text:negative", "encode-image", "encode-conditioning:image",
           "encode-conditioning:vap-video", "encode-text:vap-prompt", "encode-text:vap-negative"}
CFG, SHIFT = 5.0, 5.0


def _write_video(path, frames: int, seed: int) -> None:
    from wanflow.output import save_mp4

    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 24, 40, 3), dtype=np.uint8)
    save_mp4(pixels, path, 8, {}, quality=0)


@pytest.fixture(scope="session")
def vap_root(tmp_path_factory):
    return write_vap_models_root(tmp_path_factory.mktemp("vap-models"))


@pytest.fixture(scope="session")
def media(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("vap-inputs")
    out = dict(images)
    for name, frames, seed in (("reference", 9, 11), ("reference2", 7, 12)):
        out[name] = folder / f"{name}.mp4"
        _write_video(out[name], frames, seed)
    return out


@pytest.fixture()
def vap_env(vap_root, tmp_path, monkeypatch):
    return use_models(vap_root, tmp_path, monkeypatch)


def _recipe(tmp_path, media, reference="reference", **tables):
    files = {"image": media["first"], "vap_video": media[reference]}
    path = write_recipe(tmp_path, FAMILY, files, video={"width": 16, "height": 16}, **tables)
    import tomlkit

    doc = tomlkit.parse(path.read_text())
    doc["inputs"]["vap_prompt"] = "a ball rolls from left to right"
    doc["inputs"]["negative_vap_prompt"] = "a still picture"
    path.write_text(tomlkit.dumps(doc))
    return path


def test_the_release_runs_to_a_video_of_the_asked_size(vap_env, media, tmp_path):
    recipe = _recipe(tmp_path, media)
    first = run(recipe, vap_env)
    assert computed(first) == set(first.results) == ENCODES | AFTER
    assert video_shape(first.archive / "outputs" / "video.mp4") == (5, 16, 16)
    assert computed(run(recipe, vap_env)) == set()
    without_guidance = run(recipe, vap_env, "sampler.cfg=1.0")  # no unconditional pass: no negatives
    assert set(without_guidance.results) == ENCODES - {"encode-text:negative", "encode-text:vap-negative"} | AFTER
    # the family's defaults give both negatives one text: one encode, shared by the two nodes
    shared = run(recipe, vap_env, 'prompt.negative="grey"', 'inputs.negative_vap_prompt="grey"')
    assert shared.results["encode-text:negative"].key == shared.results["encode-text:vap-negative"].key
    assert {"encode-text:negative", "denoise"} <= computed(shared)


def test_a_new_reference_video_reencodes_only_it(vap_env, media, tmp_path):
    first = run(_recipe(tmp_path, media), vap_env)
    again = run(_recipe(tmp_path, media, reference="reference2"), vap_env)
    assert computed(again) == {"encode-conditioning:vap-video", *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]


def test_a_new_reference_caption_reencodes_only_it(vap_env, media, tmp_path):
    recipe = _recipe(tmp_path, media)
    first = run(recipe, vap_env)
    again = run(recipe, vap_env, 'inputs.vap_prompt="a ball bounces in place"')
    assert computed(again) == {"encode-text:vap-prompt", *AFTER}  # never the main prompt's encode
    assert again.lock["outputs"] != first.lock["outputs"]
    negative = run(recipe, vap_env, 'inputs.negative_vap_prompt="a grey picture"')
    assert computed(negative) == {"encode-text:vap-negative", *AFTER}
    assert negative.lock["outputs"] != first.lock["outputs"]


def _executed(recipe):
    """The executor after running the real plan up to denoise (its nodes' outputs are loadable)."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.execute import Executor
    from wanflow.engine.runner import plan_job
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    resolved = load_recipe(recipe)
    with Cache() as cache:
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        plan = attrs.evolve(plan, steps=tuple(s for s in plan.steps if s.name not in {"decode", "save",
                                                                                       "save-metadata"}))
        ex = Executor(plan, cache)
        ex.run()
        yield resolved, ex


def _one_euler_step(dit, ex, negative_caption: str) -> torch.Tensor:
    """CFG over two hand-made calls of the DiT, then one Euler step from the seeded noise."""
    from wanflow.models.vap_extras import VapExtras
    from wanflow.sampling import BUILTIN_SOLVERS, initial_noise, make_schedule

    schedule = make_schedule(BUILTIN_SOLVERS["euler"], 1, SHIFT, 1.0)
    vap = ex.load("encode-conditioning:vap-video")
    clip, y = ex.load("encode-image")["clip"], ex.load("encode-conditioning:image")["y"]
    x = initial_noise(y[:, 4:].shape, 0, noise_device="cpu")
    t = schedule.timesteps[0].reshape(1)

    def velocity(prompt: str, caption: str) -> torch.Tensor:
        extras = VapExtras(vap_latents=vap["latents"], vap_context=ex.load(caption)["context"], vap_clip=vap["clip"])
        with torch.no_grad():
            return dit(x, t, ex.load(prompt)["context"], clip_fea=clip, y=y, extras=extras)

    cond = velocity("encode-text:positive", "encode-text:vap-prompt")
    uncond = velocity("encode-text:negative", negative_caption)
    return x + (schedule.sigma(1) - schedule.sigma(0)) * (uncond + CFG * (cond - uncond))


def test_denoise_equals_a_hand_driven_step_of_the_tiny_dit(vap_env, vap_root, media, tmp_path):
    from wanflow.models.vap_loader import load_vap_dit

    recipe = _recipe(tmp_path, media, sampler={"solver": "euler", "steps": 1, "shift": SHIFT, "cfg": CFG})
    dit = load_vap_dit(vap_root / REPO / "transformer").eval()
    for _, ex in _executed(recipe):
        ours = ex.load("denoise")["latents"]
        expected = _one_euler_step(dit, ex, "encode-text:vap-negative")
        assert ours.shape == expected.shape == (1, 16, 2, 2, 2)
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6), (ours - expected).abs().max()
        # the unconditional pass reads the negative reference caption, not the reference caption
        other = _one_euler_step(dit, ex, "encode-text:vap-prompt")
        assert (ours - other).abs().max() > 1e-3


def test_the_reference_stream_reads_the_video_latent_then_its_first_frame_condition(vap_env, media, tmp_path):
    """The step's "latents" are [VAE(reference) 16 | mask 4 | VAE([first frame, grey…]) 16], its
    "clip" the CLIP tokens of the first frame."""
    from wanflow.memory import pool as model_pool
    from wanflow.steps.cond_vap import reference_clip
    from wanflow.steps.conditioning import tile_spec
    from wanflow.steps.media import padded_clip

    for resolved, ex in _executed(_recipe(tmp_path, media)):
        found = ex.load("encode-conditioning:vap-video")
        weights = ex.plan.get("encode-conditioning:vap-video").spec.weights
        vae = model_pool.vae(weights["vae"].path, "wan2.1", torch.float32, "cpu")
        clip_encoder = model_pool.image_encoder(weights["image_encoder"].path, torch.float32, "cpu")
        pixels = reference_clip(media["reference"], 5, 16, 16)  # (3, 5, 16, 16)
        with torch.no_grad():
            video = vae.encode(pixels[None], tile=tile_spec(resolved.values))
            first = vae.encode(padded_clip([pixels[:, :1]], 5)[None], tile=tile_spec(resolved.values))
            clip = clip_encoder.encode(pixels[:, 0][None])
        mask = torch.zeros(1, 4, 2, 2, 2)
        mask[:, :, 0] = 1  # the first pixel frame given, four times over in latent frame 0
        assert torch.allclose(found["latents"], torch.cat([video, mask, first], dim=1), atol=1e-6)
        assert torch.allclose(found["clip"], clip, atol=1e-6)
        assert (video - first).abs().max() > 1e-3  # the two latents are told apart


def test_a_plain_i2v_dit_in_its_place_is_refused_before_anything_runs(vap_env, vap_root, media, tmp_path):
    from wanflow.errors import ModelLoadError

    plain = vap_root / "Wan-AI" / "Wan2.1-I2V-14B-720P"
    recipe = _recipe(tmp_path, media, models={"dit": {"source": str(plain), "files": ["*.safetensors"]}})
    with pytest.raises(ModelLoadError, match=r"needs a Video-As-Prompt \(Wan2.1 I2V \+ MoT\) DiT"):
        run(recipe, vap_env)


def test_cfg_merge_pairs_each_row_with_its_own_reference_caption(vap_env, media, tmp_path):
    """One batch-2 forward ([prompt; negative] rows, each with its reference caption) gives the
    two separate passes' result."""
    latents = []
    for merge in (False, True):
        for _, ex in _executed(_recipe(tmp_path, media, sampler={"cfg_merge": merge})):
            latents.append(ex.load("denoise")["latents"])
    assert torch.allclose(*latents, rtol=1e-4, atol=1e-4), (latents[0] - latents[1]).abs().max()  # fp32 rounding


def test_fp8_storage_is_refused_at_validation_not_at_load(media, tmp_path):
    """The DiT loads whole through its own loader, which holds no fp8 blocks: the recipe is refused
    before anything runs, naming the key and the fix."""
    from wanflow.errors import RecipeError
    from wanflow.recipe import load_recipe

    path = _recipe(tmp_path, media, memory={"fp8": True})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert err.value.problems == [f"{path}: [memory].fp8 = true: fp8 storage of "
                                  "Video-As-Prompt's DiT's blocks is not built yet (it loads whole in the "
                                  "compute dtype): use false"]


def test_the_memory_plan_moves_its_dit_whole_never_block_by_block(vap_root):
    """Its loader loads the DiT whole, so the planner is told it has no blocks to stream; a plain
    Wan DiT's blocks may stream, stored in fp8 too."""
    from wanflow.steps.memory_plan import _unstreamable_dits

    vap = sorted((vap_root / REPO / "transformer").glob("*.safetensors"))
    plain = sorted((vap_root / "Wan-AI" / "Wan2.1-I2V-14B-720P").glob("*.safetensors"))
    assert vap and plain
    assert _unstreamable_dits({}, {"dit": vap}) == {"dit"}
    assert _unstreamable_dits({}, {"dit": plain}) == set()
    assert _unstreamable_dits({"memory.fp8": True}, {"dit": plain}) == set()
    assert _unstreamable_dits({"memory.fp8": True}, {"dit": vap}) == {"dit"}
