"""LongCat-Video's 720p refinement end to end, on the tiny release in its real layout.

The refinement's encode equals the VAE latents of the clip's frames upscaled as the authors'
``generate_refine`` upscales them (written out here: bilinear, trilinear to twice the frames,
padded with the last frame); its denoise equals the tiny DiT driven by hand with the release's
refinement LoRA applied as LongCat's own forward applies it, block-sparse attention at the DiT
config's ``bsa_params``, from the latents re-noised to the strength, over the authors' grid cut
below it, without guidance; the saved video holds the refined frames at twice the frame rate.
A new strength re-runs only the refinement's denoise and what follows; recipes that cannot be
refined are refused before anything runs.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.e2e._layout_longcat import BSA_PARAMS, REPO, SHIFT, refinement_lora
from tests.e2e._posterior import held
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_longcat_distilled import _longcat_lora_hooks
from tests.e2e.test_longcat_runs import _executed, videos  # noqa: F401 (the input videos' fixture)
from wanflow.errors import WanflowError

FAMILY = "longcat-video"
LORA = {"source": f"modelscope:{REPO}", "file": "lora/refinement_lora.safetensors", "target": "refine"}
REFINE = {"longcat_refine": True, "longcat_refine_width": 64, "longcat_refine_height": 64,
          "longcat_refine_steps": 6}
ENCODE, DENOISE, DECODE = "encode-conditioning:longcat-refine", "denoise:refine", "decode:refine"
ENCODE_COND = "encode-conditioning:longcat-refine-cond"
FIRST = {"encode-text:positive", "encode-text:negative", "denoise", "decode"}
REFINED = {ENCODE, DENOISE, DECODE, "save", "save-metadata"}


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, inputs=None, lora=(LORA,), **tables):
    """A 16 x 16, 9-frame text-to-video recipe with the [inputs] given as typed TOML values."""
    import tomlkit

    extra = {"lora": [dict(x) for x in lora]} if lora else {}
    path = write_recipe(tmp_path, FAMILY, None, video={"width": 16, "height": 16, "frames": 9},
                        sampler={"steps": 3}, **extra, **tables)
    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = dict(REFINE if inputs is None else inputs)
    path.write_text(tomlkit.dumps(doc))
    return path


def _upscaled(frames: torch.Tensor, size: int, new_frames: int, padded: int, front: int = 0) -> torch.Tensor:
    """generate_refine's pixels: (T, H, W, 3) uint8 -> (1, 3, front + new_frames + back, size, size)
    in [-1, 1], the first frame repeated ``front`` times before and the last after, to ``padded``."""
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True) / 255.0
    x = F.interpolate(x.permute(1, 0, 2, 3)[None], size=(new_frames, size, size), mode="trilinear",
                      align_corners=True) * 2 - 1
    return torch.cat([x[:, :, :1].repeat(1, 1, front, 1, 1), x,
                      x[:, :, -1:].repeat(1, 1, padded - new_frames - front, 1, 1)], dim=2)


def _grid(steps: int, shift: float, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """generate_refine's timesteps and σ: the shifted linspace(1, 0.001) cut below the strength."""
    sigmas = torch.linspace(1.0, 0.001, steps)
    t = shift * sigmas / (1 + (shift - 1) * sigmas) * 1000
    t = torch.cat([torch.tensor([strength * 1000]), t[t < strength * 1000]])
    return t, torch.cat([t / 1000, torch.zeros(1)])


def _refined_by_hand(root, clean: torch.Tensor, cond: torch.Tensor, context: torch.Tensor, seed: int) -> torch.Tensor:
    """generate_refine's denoise with conditioning frames, written out: the clip re-noised to 0.5
    with the seed's noise, its first 4 latent frames then set to ``cond``, the authors' grid cut
    below 0.5, the DiT's full pass over [cond; x] with the refinement LoRA and block-sparse
    attention, Euler on the generated frames only; returns [cond; x]."""
    from wanflow.models.longcat_bsa import BsaParams
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity

    dit = load_longcat_dit(root / REPO / "dit").eval()
    _longcat_lora_hooks(dit, refinement_lora())
    sparse = BsaParams.from_config(BSA_PARAMS)
    timesteps, sigmas = _grid(6, SHIFT, 0.5)
    c = cond.shape[2]
    x = (0.5 * clean + 0.5 * initial_noise(tuple(clean.shape), seed, noise_device="cpu"))[:, :, c:]
    for i, t in enumerate(timesteps):
        with torch.no_grad():
            out = dit(torch.cat([cond, x], dim=2), t.reshape(1), context, cond_frames=c, sparse=sparse)
        x = x + (sigmas[i + 1] - sigmas[i]) * flow_velocity(out[:, :, c:])
    return torch.cat([cond, x], dim=2)


def test_the_refinement_equals_the_authors_stage_by_hand(longcat_env, longcat_root, tmp_path):
    from wanflow.memory import pool as model_pool
    from wanflow.models.longcat_bsa import BsaParams
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity
    from wanflow.steps.conditioning import tile_spec

    for resolved, ex in _executed(_recipe(tmp_path), keep={"decode", DECODE}):
        frames = ex.load("decode")["frames"]  # (9, 16, 16, 3)
        # twice the frames, padded to 8 latent frames (2 chunks of 4); diffusers' VAE, which the
        # authors encode with, reads the first 1 + 4·7 = 29 of the 32 and leaves the rest
        pixels = _upscaled(frames, 64, 18, 32)
        vae = model_pool.vae(ex.plan.get(ENCODE).spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        clean = held(vae, pixels[:, :, :29], True, 0, ENCODE, tile_spec(resolved.values))  # 8 latent frames
        ours = ex.load(ENCODE)["latents"]
        assert ours.shape == (1, 16, 8, 8, 8)
        assert torch.allclose(ours, clean, atol=1e-5), (ours - clean).abs().max()

        dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
        assert _longcat_lora_hooks(dit, refinement_lora()) == 14
        sparse = BsaParams.from_config(BSA_PARAMS)
        context = ex.load("encode-text:positive")["context"]
        timesteps, sigmas = _grid(6, SHIFT, 0.5)
        x = 0.5 * clean + 0.5 * initial_noise((1, 16, 8, 8, 8), 0, noise_device="cpu")
        dense = x.clone()
        for i, t in enumerate(timesteps):
            with torch.no_grad():
                v = flow_velocity(dit(x, t.reshape(1), context, sparse=sparse))
                v_dense = flow_velocity(dit(dense, t.reshape(1), context))
            x = x + (sigmas[i + 1] - sigmas[i]) * v
            dense = dense + (sigmas[i + 1] - sigmas[i]) * v_dense
        refined = ex.load(DENOISE)["latents"]
        assert torch.allclose(refined, x, rtol=1e-5, atol=1e-5), (refined - x).abs().max()
        assert (refined - dense).abs().max() > 1e-3  # the attention is sparse: dense attention is another result
        decoded = ex.load(DECODE)["frames"]
        assert decoded.shape == (18, 64, 64, 3)


def test_a_refined_run_saves_twice_the_frames_and_reruns_only_what_changed(longcat_env, tmp_path):
    import zipfile

    from PIL import Image

    from wanflow.steps.longcat_frames import source_rate

    recipe = _recipe(tmp_path)
    first = run(recipe, longcat_env)
    assert computed(first) == FIRST | REFINED
    video = first.archive / "outputs" / "video.mp4"
    assert video_shape(video) == (18, 64, 64)
    assert source_rate(video) == 30  # LongCat's 15 fps, doubled with the frames
    assert computed(run(recipe, longcat_env)) == set()
    # a new strength: only the refinement's denoise and what follows
    assert computed(run(recipe, longcat_env, "inputs.longcat_refine_strength=0.7")) == REFINED - {ENCODE}
    # spatial only: the same frame count, re-encoded
    spatial = run(recipe, longcat_env, "inputs.longcat_refine_spatial_only=true")
    assert computed(spatial) == REFINED
    assert video_shape(spatial.archive / "outputs" / "video.mp4") == (9, 64, 64)
    # PNG frames are the refined ones too
    pngs = run(recipe, longcat_env, "output.png_frames=true")
    with zipfile.ZipFile(pngs.archive / "outputs" / "frames.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        assert len(names) == 18
        with zf.open(names[0]) as f:
            assert Image.open(f).size == (64, 64)


def test_the_refined_size_defaults_to_the_authors_720p_bucket():
    from wanflow.families.longcat import refine_size

    assert refine_size(832, 480) == (1280, 704)  # 480p landscape -> 704 x 1280
    assert refine_size(480, 832) == (704, 1280)
    assert refine_size(512, 512) == (960, 960)


@pytest.mark.parametrize("inputs, lora, message", [
    (REFINE, (), 'target = "refine"'),
    ({"longcat_refine_steps": 10}, (), "is read only by the 720p refinement"),
    ({}, (LORA,), "patches the 720p refinement"),
    ({**REFINE, "longcat_refine_width": 100}, (LORA,), "must be a multiple of 64"),
    ({**REFINE, "longcat_refine_width": 0}, (LORA,), "give the refined width and height together"),
    ({**REFINE, "longcat_refine_height": 0}, (LORA,), "give the refined width and height together"),
])
def test_a_refinement_that_cannot_run_is_refused_before_anything_runs(longcat_env, tmp_path, inputs, lora, message):
    from wanflow.recipe import load_recipe

    with pytest.raises(WanflowError) as err:
        load_recipe(_recipe(tmp_path, inputs=inputs, lora=lora))
    assert message in str(err.value) and "longcat-video.toml" in str(err.value)


def test_other_families_cannot_refine(env, tmp_path):
    import tomlkit

    from wanflow.recipe import load_recipe

    path = write_recipe(tmp_path, "wan2.1-t2v-1.3b", None, video={"width": 16, "height": 16})
    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = {"longcat_refine": True}
    path.write_text(tomlkit.dumps(doc))
    with pytest.raises(WanflowError, match="is read by longcat-video only"):
        load_recipe(path)
    lora = write_recipe(tmp_path, "wan2.1-t2v-1.3b", {}, video={"width": 16, "height": 16},
                        lora=[{"path": "x.safetensors", "target": "refine"}])
    with pytest.raises(WanflowError, match="takes LoRAs on dit"):
        load_recipe(lora)


def test_the_tiny_release_s_config_carries_its_block_sparse_attention(longcat_root):
    config = json.loads((longcat_root / REPO / "dit" / "config.json").read_text())
    assert config["bsa_params"] == BSA_PARAMS


def test_the_plan_sizes_the_refinement(longcat_env, tmp_path):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    resolved = load_recipe(_recipe(tmp_path))
    peaks = {p.step: p for p in get_registry().pipeline(resolved.model).memory_plan(resolved).peaks}
    assert {ENCODE, DENOISE, DECODE} <= set(peaks)
    # the refined clip (64 x 64, 8 latent frames) holds more activations than the 16 x 16 one
    assert peaks[DENOISE].host_bytes > peaks["denoise"].host_bytes
    assert peaks[DECODE].host_bytes > peaks["decode"].host_bytes


def test_the_plan_and_the_attention_agree_on_the_released_chunking():
    import math

    from wanflow.memory import longcat_estimate
    from wanflow.models import longcat_bsa

    released = longcat_bsa.BsaParams()
    assert longcat_estimate.BSA_GROUP_CHUNKS == longcat_bsa.GROUP_CHUNKS
    assert longcat_estimate.BSA_SPARSITY == released.sparsity
    assert longcat_estimate.BSA_CHUNK_TOKENS == math.prod(released.chunk_k)


def test_a_continuation_s_refinement_holds_its_frames_at_the_refined_rate(longcat_env, longcat_root, tmp_path,
                                                                          videos):  # noqa: F811 (the fixture)
    """generate_refine(video=video[::stride], num_cond_frames=2 · 5): the input video's last 10
    frames at 30 fps, the first repeated 3 times before them, encode to 4 clean latent frames; the
    clip's 18 upscaled frames (its own first 10 being the conditioning ones) with the same 3 before
    and 8 after encode to 8; the DiT runs the full pass with them as conditioning frames."""
    from wanflow.memory import pool as model_pool
    from wanflow.output import load_video, to_model_video
    from wanflow.steps.conditioning import tile_spec

    inputs = {**REFINE, "longcat_video": str(videos["past"]), "longcat_cond_frames": 5}
    for resolved, ex in _executed(_recipe(tmp_path, inputs=inputs), keep={"decode", DECODE}):
        vae = model_pool.vae(ex.plan.get(ENCODE).spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        tile = tile_spec(resolved.values)
        last = torch.from_numpy(to_model_video(load_video(videos["past"], 11, 64, 64)))[:, 1:]  # 10 of 11 at 8 fps
        cond = held(vae, torch.cat([last[:, :1].repeat(1, 3, 1, 1), last], dim=1)[None], True, 0, ENCODE_COND, tile)
        clean = held(vae, _upscaled(ex.load("decode")["frames"], 64, 18, 29, front=3), True, 0, ENCODE, tile)
        assert cond.shape == (1, 16, 4, 8, 8) and clean.shape == (1, 16, 8, 8, 8)
        assert torch.allclose(ex.load(ENCODE_COND)["latents"], cond, atol=1e-5)
        assert torch.allclose(ex.load(ENCODE)["latents"], clean, atol=1e-5)

        context = ex.load("encode-text:positive")["context"]
        expected = _refined_by_hand(longcat_root, clean, cond, context, seed=0)
        assert torch.allclose(ex.load(DENOISE)["latents"], expected, rtol=1e-5, atol=1e-5)
        assert ex.load(DECODE)["frames"].shape == (18, 64, 64, 3)  # the 3 padding frames dropped


def test_an_image_to_video_refinement_holds_the_image(longcat_env, images, tmp_path):
    """generate_refine(image=..., num_cond_frames=1): the image at the refined size, repeated 12
    times before itself, encodes to 4 clean latent frames; a new image re-runs both encodes."""
    from wanflow.memory import pool as model_pool
    from wanflow.steps.conditioning import tile_spec
    from wanflow.steps.media import image_tensor

    inputs = {**REFINE, "image": str(images["first"])}
    for resolved, ex in _executed(_recipe(tmp_path, inputs=inputs), keep={"decode"}):
        vae = model_pool.vae(ex.plan.get(ENCODE).spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        image = image_tensor(images["first"], 64, 64)  # (3, 1, 64, 64)
        cond = held(vae, image.repeat(1, 13, 1, 1)[None], True, 0, ENCODE_COND, tile_spec(resolved.values))
        assert torch.allclose(ex.load(ENCODE_COND)["latents"], cond, atol=1e-5)
        assert ex.load(ENCODE)["latents"].shape == (1, 16, 12, 8, 8)  # 4 conditioning + 8 generated
        assert torch.equal(ex.load(DENOISE)["latents"][:, :, :4], ex.load(ENCODE_COND)["latents"])  # held
    first = run(_recipe(tmp_path, inputs=inputs), longcat_env)
    assert video_shape(first.archive / "outputs" / "video.mp4") == (18, 64, 64)
    (tmp_path / "other").mkdir()
    other = run(_recipe(tmp_path / "other", inputs={**inputs, "image": str(images["last"])}), longcat_env)
    assert {ENCODE_COND, ENCODE, DENOISE} <= computed(other)
    assert not {"encode-text:positive", "encode-text:negative"} & computed(other)


def test_a_long_video_is_refined_window_by_window(longcat_env, longcat_root, tmp_path):
    """The authors' long-video refinement: windows of 9 frames 4 apart in the joined video; window 1
    holds the last 10 frames of refined window 0 (3 padding frames before them) as conditioning,
    the empty prompt, noise from seed + 1; the video is window 0's 18 frames, then window 1's 8 new."""
    from wanflow.memory import pool as model_pool
    from wanflow.output import to_model_video
    from wanflow.steps.conditioning import tile_spec

    inputs = {**REFINE, "longcat_segments": 1, "longcat_cond_frames": 5}
    keep = {"decode", "decode:segment-1", "join-segments", "decode:refine-0", "decode:refine-1"}
    for resolved, ex in _executed(_recipe(tmp_path, inputs=inputs), keep=keep):
        joined = ex.load("join-segments")["frames"]  # 9 + 4 frames
        assert torch.equal(ex.load("frames:refine-1")["frames"], joined[4:13])
        vae = model_pool.vae(ex.plan.get("encode-conditioning:longcat-refine-1").spec.weights["vae"].path, "wan2.1",
                             torch.float32, "cpu")
        last = torch.from_numpy(to_model_video(ex.load("decode:refine-0")["frames"][-10:].numpy()))
        cond = held(vae, torch.cat([last[:, :1].repeat(1, 3, 1, 1), last], dim=1)[None], True, 0,
                    "encode-conditioning:longcat-refine-cond-1", tile_spec(resolved.values))
        assert torch.allclose(ex.load("encode-conditioning:longcat-refine-cond-1")["latents"], cond, atol=1e-5)
        empty, prompt = ex.load("encode-text:refine")["context"], ex.load("encode-text:positive")["context"]
        assert empty.shape != prompt.shape or not torch.equal(empty, prompt)

        clean = ex.load("encode-conditioning:longcat-refine-1")["latents"]
        expected = _refined_by_hand(longcat_root, clean, cond, empty, seed=1)
        assert torch.allclose(ex.load("denoise:refine-1")["latents"], expected, rtol=1e-5, atol=1e-5)
    first = run(_recipe(tmp_path, inputs=inputs), longcat_env)
    assert video_shape(first.archive / "outputs" / "video.mp4") == (18 + 8, 64, 64)
    # a second segment reuses the first windows' refinement
    longer = run(_recipe(tmp_path, inputs={**inputs, "longcat_segments": 2}), longcat_env)
    assert not {"denoise:refine-0", "denoise:refine-1", "encode-text:refine"} & computed(longer)
    assert {"denoise:refine-2", "decode:refine-2"} <= computed(longer)
    assert video_shape(longer.archive / "outputs" / "video.mp4") == (18 + 8 + 8, 64, 64)


def test_compiled_blocks_attend_block_sparsely_as_the_eager_dit(longcat_root):
    """[runtime].compile = "blocks" with the refinement's sparse attention: the same velocity."""
    from tests.e2e.test_longcat_fp8 import eager_and_compiled
    from wanflow.memory import pool as model_pool
    from wanflow.models.longcat_bsa import BsaParams

    eager, compiled = eager_and_compiled(longcat_root)
    sparse = BsaParams.from_config(BSA_PARAMS)
    g = torch.Generator().manual_seed(5)
    x, context = torch.randn(1, 16, 8, 8, 8, generator=g), torch.randn(1, 5, 64, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        expected, out = eager(x, t, context, sparse=sparse), compiled(x, t, context, sparse=sparse)
        dense = eager(x, t, context)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert (expected - dense).abs().max() > 1e-3
    model_pool.clear()


def test_a_refined_grid_the_sparse_attention_cannot_attend_is_refused_before_anything_runs(
        longcat_root, tmp_path, monkeypatch):
    """With the release's own bsa_params (1 key chunk in 16), a 64 x 64 refinement of 9 frames has
    2 key chunks and would keep none: refused at planning, naming the keys, nothing computed."""
    import shutil

    from wanflow.errors import ModelInputError

    root = tmp_path / "models"
    shutil.copytree(longcat_root, root)
    config = root / REPO / "dit" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "bsa_params": {
        "sparsity": 0.9375, "chunk_3d_shape_q": [4, 4, 4], "chunk_3d_shape_k": [4, 4, 4]}}))
    env = use_models(root, tmp_path, monkeypatch)
    with pytest.raises(ModelInputError, match=r"\[inputs\]\.longcat_refine: the refined clip's \(8, 4, 4\) token "
                                              r"grid cannot take the DiT's block-sparse attention .*keeps .* = 0 key "
                                              r"chunks.*longcat_refine_width"):
        run(_recipe(tmp_path), env)
    assert not [p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file()]  # nothing computed


def test_the_refinement_streams_its_blocks_to_the_same_latents(longcat_env, tmp_path, monkeypatch):
    """The refinement's DiT (LoRA-patched, block-sparse) with its two blocks streamed, one from
    its checkpoint file and one from host memory, gives the latents of the whole DiT to fp32
    rounding: a streamed DiT takes its LoRA on the fly where a resident one merges it (docs/lora.md,
    "Merged or on the fly": ≤ 2e-6 of the largest value). Each run in a cache of its own."""
    import attrs

    from wanflow.engine.cache import Cache
    from wanflow.engine.execute import Executor
    from wanflow.engine.runner import plan_job
    from wanflow.memory import pool as model_pool
    from wanflow.memory import streamed
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    placed, real = [], streamed.load_placed_longcat
    monkeypatch.setattr(streamed, "load_placed_longcat",
                        lambda files, tiers, **kw: placed.append(tuple(tiers)) or real(files, tiers, **kw))
    model_pool.clear()
    resolved = load_recipe(_recipe(tmp_path))
    latents = {}
    for tiers in ((), ("disk", "host")):
        monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / f"cache-{len(tiers)}"))
        with Cache() as cache:
            plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
            steps = tuple(attrs.evolve(s, spec=attrs.evolve(s.spec, step=attrs.evolve(s.spec.step, tiers=tiers)))
                          if s.name == DENOISE else s for s in plan.steps if s.name not in ("save", "save-metadata"))
            ex = Executor(attrs.evolve(plan, steps=steps), cache)
            ex.run()
            assert not ex.results[DENOISE].hit
            latents[tiers] = ex.load(DENOISE)["latents"]
    assert placed == [("disk", "host")]  # the refinement's DiT streamed its blocks; the first clip's did not
    model_pool.clear()
    moved, whole = latents[("disk", "host")], latents[()]
    assert (moved - whole).abs().max() <= 2e-6 * whole.abs().max()
