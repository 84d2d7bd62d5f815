"""LongCat-Video end to end on tiny weights in the release's layout.

Text-to-video and video continuation make an mp4 of the requested length; a continuation's clip
begins with its conditioning frames; the denoise step equals the tiny DiT and LongCat's sampler
driven by hand over the plain full pass (so the KV-cache path the step takes, the sign
convention, CFG-Zero* and the release's shift are all checked); a new conditioning video re-runs
only its encode and what follows; the authors' and DiffSynth's configurations differ and are
keyed; bad inputs are refused before anything runs.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from tests.e2e._layout_longcat import REPO, SHIFT
from tests.e2e._posterior import held
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe
from wanflow.errors import WanflowError

FAMILY = "longcat-video"
AFTER = {"denoise", "decode", "save", "save-metadata"}
TEXTS = {"encode-text:positive", "encode-text:negative"}
ENCODE = "encode-conditioning:longcat-frames"
COND = 5  # conditioning frames of the tests' continuations: 2 latent frames


def _write_video(path, frames: int, seed: int, fps: int = 8) -> None:
    from wanflow.output import save_mp4

    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 24, 40, 3), dtype=np.uint8)
    save_mp4(pixels, path, fps, {}, quality=0)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("longcat-inputs")
    out = {}
    for name, frames, seed, fps in (("past", 11, 21, 8), ("other", 9, 22, 8), ("short", 3, 23, 8),
                                    ("fast", 11, 24, 30), ("fast-short", 7, 25, 30)):
        out[name] = folder / f"{name}.mp4"
        _write_video(out[name], frames, seed, fps)
    return out


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, video=None, frames: int = 9, cond: int = COND, cond_latents: str | None = None, **tables):
    inputs = {} if video is None else {"longcat_video": video}
    path = write_recipe(tmp_path, FAMILY, inputs, video={"width": 16, "height": 16, "frames": frames}, **tables)
    if video is not None:
        import tomlkit

        doc = tomlkit.parse(path.read_text())
        doc["inputs"]["longcat_cond_frames"] = cond
        if cond_latents is not None:
            doc["inputs"]["longcat_cond_latents"] = cond_latents
        path.write_text(tomlkit.dumps(doc))
    return path


def test_text_to_video_makes_a_video_of_the_asked_length(longcat_env, tmp_path):
    recipe = _recipe(tmp_path)
    first = run(recipe, longcat_env)
    assert computed(first) == set(first.results) == TEXTS | AFTER
    assert video_shape(first.archive / "outputs" / "video.mp4") == (9, 16, 16)
    assert computed(run(recipe, longcat_env)) == set()
    without_guidance = run(recipe, longcat_env, "sampler.cfg=1.0", "sampler.cfg_zero_star=false")  # no negative
    assert set(without_guidance.results) == {"encode-text:positive"} | AFTER


def test_a_continuation_begins_with_its_conditioning_frames(longcat_env, videos, tmp_path):
    from wanflow.memory import pool as model_pool

    outcome = run(_recipe(tmp_path, videos["past"], frames=13), longcat_env)
    assert computed(outcome) == TEXTS | {ENCODE} | AFTER
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (13, 16, 16)
    for _, ex in _executed(_recipe(tmp_path, videos["past"], frames=13), keep={"decode"}):
        cond, latents = ex.load(ENCODE)["latents"], ex.load("denoise")["latents"]
        assert cond.shape == (1, 16, 2, 2, 2) and latents.shape == (1, 16, 4, 2, 2)
        assert torch.equal(latents[:, :, :2], cond)  # held exactly, after the last step too
        vae = model_pool.vae(ex.plan.get("decode").spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        with torch.no_grad():
            alone = vae.decode(cond)  # (1, 3, 5, H, W): the causal VAE decodes leading frames alone
        from wanflow.output import to_uint8_frames

        frames = ex.load("decode")["frames"]  # (13, H, W, 3)
        assert torch.equal(frames[:COND], torch.from_numpy(to_uint8_frames(alone[0])))
        assert (frames[COND:].float() - frames[COND - 1:COND].float()).abs().max() > 0  # then new frames


def _executed(recipe, keep: set[str] = frozenset()):
    """The executor after running the real plan up to denoise (and ``keep``)."""
    from wanflow.engine.cache import Cache
    from wanflow.engine.execute import Executor
    from wanflow.engine.runner import plan_job
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    resolved = load_recipe(recipe)
    dropped = {"decode", "save", "save-metadata"} - set(keep)
    with Cache() as cache:
        plan = plan_job(resolved, get_registry().pipeline(resolved.model), cache)
        plan = attrs.evolve(plan, steps=tuple(s for s in plan.steps if s.name not in dropped))
        ex = Executor(plan, cache)
        ex.run()
        yield resolved, ex


def _by_hand(dit, ex, schedule, cfg: float, zero_star: bool, frames: int, sign: float = -1.0) -> torch.Tensor:
    """LongCat's loop over the plain full pass: the conditioning latents before the noisy frames
    at every call (``cond_frames``), the output negated into a velocity, CFG or CFG-Zero*, Euler on
    the frames after the conditioning only; returns the whole clip."""
    from wanflow.sampling import initial_noise

    cond = ex.load(ENCODE)["latents"]
    k = cond.shape[2]
    x = initial_noise((1, 16, (frames - 1) // 4 + 1, 2, 2), 0, noise_device="cpu")[:, :, k:]
    pos, neg = ex.load("encode-text:positive")["context"], ex.load("encode-text:negative")["context"]
    for i, t in enumerate(schedule.timesteps):
        def velocity(context, t=t, x=x):
            with torch.no_grad():
                out = dit(torch.cat([cond, x], dim=2), t.reshape(1), context, cond_frames=k)
            return sign * out[:, :, k:]

        vc, vu = velocity(pos), velocity(neg)
        s = (vc * vu).sum() / (vu.pow(2).sum() + 1e-8) if zero_star else 1.0
        v = s * vu + cfg * (vc - s * vu)
        x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * v
    return torch.cat([cond, x], dim=2)


@pytest.mark.parametrize("config", ["authors", "diffsynth"])
def test_denoise_equals_the_dit_and_sampler_driven_by_hand(longcat_env, longcat_root, videos, tmp_path, config):
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling.longcat import longcat_schedule
    from wanflow.sampling.schedules import euler_schedule

    if config == "authors":  # its σ list's steps above t = 500 (1000, 750 at shift 3), then the 10 of the tail
        sampler, schedule, cfg = {"steps": 3}, longcat_schedule(3, SHIFT), 4.0
        assert schedule.steps == 12
    else:
        sampler = {"solver": "euler", "steps": 2, "shift": 1.0, "cfg": 2.0, "cfg_zero_star": False}
        schedule, cfg = euler_schedule(2, 1.0), 2.0
    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    for _, ex in _executed(_recipe(tmp_path, videos["past"], frames=13, sampler=sampler)):
        ours = ex.load("denoise")["latents"]
        expected = _by_hand(dit, ex, schedule, cfg, config == "authors", 13)
        assert ours.shape == expected.shape == (1, 16, 4, 2, 2)
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5), (ours - expected).abs().max()
        flipped = _by_hand(dit, ex, schedule, cfg, config == "authors", 13, sign=1.0)  # x0 − noise read as v
        assert (ours - flipped).abs().max() > 1e-2
        # only the authors' sampler reads the release's scheduler config (its shift is keyed)
        weights = ex.plan.get("denoise").spec.weights
        assert ("scheduler" in weights) == (config == "authors")


def test_text_to_video_walks_the_authors_grid_without_the_tail(longcat_env, longcat_root, tmp_path):
    """generate_t2v has no enhance_hf tail (only generate_vc adds it): 3 steps run 3 DiT calls a pass."""
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import flow_velocity, longcat_schedule

    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()

    def by_hand(schedule, pos, neg):
        x = initial_noise((1, 16, 3, 2, 2), 0, noise_device="cpu")
        for i, t in enumerate(schedule.timesteps):
            with torch.no_grad():
                vc, vu = (flow_velocity(dit(x, t.reshape(1), c)) for c in (pos, neg))
            s = (vc * vu).sum() / (vu.pow(2).sum() + 1e-8)
            x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (s * vu + 4.0 * (vc - s * vu))
        return x

    for _, ex in _executed(_recipe(tmp_path, sampler={"steps": 3})):
        ours = ex.load("denoise")["latents"]
        pos, neg = ex.load("encode-text:positive")["context"], ex.load("encode-text:negative")["context"]
        expected = by_hand(longcat_schedule(3, SHIFT, enhance_hf=False), pos, neg)
        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5), (ours - expected).abs().max()
        with_tail = by_hand(longcat_schedule(3, SHIFT), pos, neg)
        assert (ours - with_tail).abs().max() > 1e-2


def test_the_authors_grid_takes_the_releases_shift(longcat_env, longcat_root, videos, tmp_path):
    """The same run by hand at shift 1 instead of the release's 3 (t = 500.5 for 750) is another result."""
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.sampling.longcat import longcat_schedule

    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    for _, ex in _executed(_recipe(tmp_path, videos["past"], frames=13, sampler={"steps": 3})):
        ours = ex.load("denoise")["latents"]
        other = _by_hand(dit, ex, longcat_schedule(3, 1.0), 4.0, True, 13)
        assert (ours - other).abs().max() > 1e-3


def test_a_new_conditioning_video_reencodes_only_it(longcat_env, videos, tmp_path):
    first = run(_recipe(tmp_path, videos["past"]), longcat_env)
    again = run(_recipe(tmp_path, videos["other"]), longcat_env)
    assert computed(again) == {ENCODE, *AFTER}  # never the text encodes
    assert again.lock["outputs"] != first.lock["outputs"]
    longer = run(_recipe(tmp_path, videos["other"], frames=13), longcat_env)
    assert computed(longer) == AFTER  # the encode reads the conditioning frames, not the clip's length
    fewer = run(_recipe(tmp_path, videos["other"], frames=13, cond=1), longcat_env)
    assert computed(fewer) == {ENCODE, *AFTER}


def test_the_two_sampler_configurations_differ_and_are_keyed(longcat_env, videos, tmp_path):
    recipe = _recipe(tmp_path, videos["past"])
    authors = run(recipe, longcat_env)
    diffsynth = run(recipe, longcat_env, 'sampler.solver="euler"', "sampler.shift=1.0", "sampler.cfg=2.0",
                    "sampler.cfg_zero_star=false")
    assert computed(diffsynth) == {ENCODE, *AFTER}  # its encode takes the posterior mean
    assert diffsynth.results["denoise"].key != authors.results["denoise"].key
    assert diffsynth.lock["outputs"] != authors.lock["outputs"]
    plain_cfg = run(recipe, longcat_env, "sampler.cfg_zero_star=false")  # CFG-Zero* alone is keyed
    assert computed(plain_cfg) == AFTER and plain_cfg.lock["outputs"] != authors.lock["outputs"]


@pytest.mark.parametrize("change, values, message", [
    ("short", {}, r"\[inputs\]\.longcat_video = .*short\.mp4.*: the video has 3 frames, fewer than the 5 "
                  r"conditioning frames of \[inputs\]\.longcat_cond_frames.*longcat_cond_frames = 1"),
    ("past", {"inputs": {"longcat_cond_frames": 6}}, r"\[inputs\]\.longcat_cond_frames = 6: must be 4n\+1 \(5 or 9"),
    ("past", {"inputs": {"longcat_cond_frames": 9}}, r"\[video\]\.frames = 9: leaves no frame to generate after "
                                                    r"the 9 conditioning frames.*use at least 13"),
    ("past", {"video": {"frames": 11}}, r"\[video\]\.frames = 11: must be 4n\+1"),
    ("past", {"sampler": {"shift": 3.0}}, r"\[sampler\]\.shift = 3\.0: the authors' sampler takes its shift from "
                                          r"the release's scheduler/scheduler_config\.json"),
    ("past", {"sampler": {"sliding_window_size": 2}}, r"\[sampler\]\.sliding_window_size = 2: LongCat's denoise "
                                                      "step runs the whole clip"),
    ("past", {"sampler": {"cache": {"method": "teacache", "threshold": 0.1}}},
     r"\[sampler\.cache\]\.coefficients = \"auto\": no TeaCache polynomial is published for LongCat-Video"),
    ("fast-short", {}, r"the video has 7 frames \(4 at \[video\]\.fps = 15: every 2 of its 30 fps\), fewer than "
                       r"the 5 conditioning frames"),
    (None, {"inputs": {"longcat_cond_frames": 17}}, r"\[inputs\]\.longcat_cond_frames = 17: is read only for a "
                                                    "continuation"),
])
def test_bad_input_is_refused_before_anything_runs(longcat_env, videos, tmp_path, change, values, message):
    import tomlkit

    recipe = _recipe(tmp_path, None if change is None else videos[change])
    doc = tomlkit.parse(recipe.read_text())
    for table, entries in values.items():
        for key, value in entries.items():
            if isinstance(value, dict):
                doc[table][key] = value
            else:
                doc.setdefault(table, {})[key] = value
    recipe.write_text(tomlkit.dumps(doc))
    with pytest.raises(WanflowError, match=message) as refused:
        run(recipe, longcat_env)
    assert str(refused.value).startswith(str(recipe))  # names the recipe file, then the key
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_other_families_cannot_borrow_longcat_settings(env, tmp_path):
    recipe = write_recipe(tmp_path, "wan2.1-t2v-1.3b")
    with pytest.raises(WanflowError, match=r"\[sampler\]\.solver = \"longcat\": LongCat-Video's sampler runs the "
                                           r"longcat-video family only"):
        run(recipe, env, 'sampler.solver="longcat"')
    with pytest.raises(WanflowError, match=r"\[inputs\]\.longcat_cond_frames = 17: is read by longcat-video only"):
        run(recipe, env, "inputs.longcat_cond_frames=17")


def test_a_training_recipe_takes_diffsynth_s_lora_targets(longcat_env, videos, tmp_path):
    from wanflow.recipe import load_recipe

    recipe = _recipe(tmp_path)
    (tmp_path / "data.csv").write_text(f"video,prompt\n{videos['past']},a ball\n")
    resolved = load_recipe(recipe, sets=(f'train.dataset="{tmp_path / "data.csv"}"',))
    assert tuple(resolved.values["train.lora_targets"]) == (
        "adaLN_modulation.1", "attn.qkv", "attn.proj", "cross_attn.q_linear", "cross_attn.kv_linear",
        "cross_attn.proj", "ffn.w1", "ffn.w2", "ffn.w3")
    assert resolved.origins["train.lora_targets"] == "family"


def test_the_conditioning_latents_are_the_vae_latents_of_the_videos_last_frames(longcat_env, videos, tmp_path):
    """The authors continue from the video's last frames: the encode is the VAE posterior's sample
    of frames 6…10 of the 11, resized and centre-cropped to the clip, ε drawn from the node's seed
    (written out by hand, ``_posterior``); DiffSynth's configuration encodes the mean."""
    from wanflow.memory import pool as model_pool
    from wanflow.output import load_video, to_model_video
    from wanflow.steps.conditioning import tile_spec

    every = torch.from_numpy(to_model_video(load_video(videos["past"], 11, 16, 16)))[None]  # (1, 3, 11, H, W)
    for latents in ("sample", "mean"):
        for resolved, ex in _executed(_recipe(tmp_path, videos["past"], cond_latents=latents)):
            found = ex.load(ENCODE)["latents"]
            vae = model_pool.vae(ex.plan.get(ENCODE).spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
            tile = tile_spec(resolved.values)
            last, other_seed, mean, first = (
                held(vae, every[:, :, 11 - COND:], latents == "sample", 0, ENCODE, tile),
                held(vae, every[:, :, 11 - COND:], True, 1, ENCODE, tile),
                held(vae, every[:, :, 11 - COND:], False, tile=tile),
                held(vae, every[:, :, :COND], latents == "sample", 0, ENCODE, tile))
            assert torch.allclose(found, last, atol=1e-5, rtol=0)
            assert (found - first).abs().max() > 1e-3
            assert ((found - mean).abs().max() > 1e-3) == (latents == "sample")
            assert (found - other_seed).abs().max() > 1e-3


def test_wanflow_plan_sizes_its_train_step(longcat_env, videos, tmp_path):
    from wanflow.plugins import get_registry
    from wanflow.recipe import load_recipe

    (tmp_path / "data.csv").write_text(f"video,prompt\n{videos['past']},a ball\n")
    resolved = load_recipe(_recipe(tmp_path), sets=(f'train.dataset="{tmp_path / "data.csv"}"',))
    found = get_registry().pipeline(resolved.model).memory_plan(resolved)
    assert [p.step for p in found.peaks][-1] == "train"


def test_a_wan_dit_in_its_place_is_refused_before_anything_runs(longcat_env, longcat_root, tmp_path):
    from wanflow.errors import ModelLoadError

    wan = longcat_root / "Wan-AI" / "Wan2.1-T2V-14B"
    recipe = _recipe(tmp_path, models={"dit": {"source": str(wan), "files": ["*.safetensors"]}})
    with pytest.raises(ModelLoadError, match=r"needs a LongCat-Video DiT \(longcat-video\), but the file looks like "
                                             r"a Wan T2V DiT"):
        run(recipe, longcat_env)


def test_the_authors_sampler_needs_the_releases_scheduler_config(longcat_env, longcat_root, tmp_path):
    from wanflow.errors import ModelLoadError

    files = ["dit/diffusion_pytorch_model*.safetensors", "dit/config.json"]
    recipe = _recipe(tmp_path, models={"dit": {"source": str(longcat_root / REPO), "files": files}})
    with pytest.raises(ModelLoadError, match=r"the authors' sampler reads the release's "
                                             r"scheduler/scheduler_config\.json for its shift, and none is among"):
        run(recipe, longcat_env)
    diffsynth = run(recipe, longcat_env, 'sampler.solver="euler"', "sampler.shift=1.0")  # it never reads it
    assert video_shape(diffsynth.archive / "outputs" / "video.mp4") == (9, 16, 16)


def test_a_faster_video_is_brought_to_the_clips_frame_rate_first(longcat_env, videos, tmp_path):
    """30 fps to [video].fps = 15: every 2nd frame (0, 2, … 10), of which the last 5 condition the
    clip, as the authors' demo strides its input; the rate is in the encode's key."""
    from wanflow.memory import pool as model_pool
    from wanflow.output import load_video, to_model_video
    from wanflow.steps.conditioning import tile_spec

    recipe = _recipe(tmp_path, videos["fast"])
    for resolved, ex in _executed(recipe):
        found = ex.load(ENCODE)["latents"]
        vae = model_pool.vae(ex.plan.get(ENCODE).spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        every = torch.from_numpy(to_model_video(load_video(videos["fast"], 11, 16, 16)))  # (3, 11, H, W)
        strided, last = (held(vae, every[:, list(frames)][None], True, 0, ENCODE, tile_spec(resolved.values))
                         for frames in (range(2, 11, 2), range(6, 11)))
        assert torch.allclose(found, strided, atol=1e-5, rtol=0)
        assert (found - last).abs().max() > 1e-3
    first = run(recipe, longcat_env)
    slower = run(recipe, longcat_env, "video.fps=30")  # every frame: another conditioning
    assert computed(slower) == {ENCODE, *AFTER} and slower.lock["outputs"] != first.lock["outputs"]


@pytest.mark.parametrize("continuation", [False, True], ids=["text-to-video", "continuation"])
def test_cfg_merge_gives_the_two_pass_numbers_and_is_keyed(longcat_env, videos, tmp_path, continuation):
    """cfg_merge runs [prompt; negative] as one batch-2 forward over the one conditioning cache,
    each row attending to its own text slots: CFG-Zero*'s result of the two passes, to fp32 rounding."""
    video = videos["past"] if continuation else None
    frames = 13 if continuation else 9
    latents = {}
    for merge in (False, True):
        for _, ex in _executed(_recipe(tmp_path, video, frames=frames, sampler={"steps": 3, "cfg_merge": merge})):
            latents[merge] = ex.load("denoise")["latents"]
            assert ex.plan.get("denoise").spec.step.kind == "denoise-longcat"
    assert torch.allclose(latents[True], latents[False], rtol=1e-5, atol=1e-5), \
        (latents[True] - latents[False]).abs().max()
    merged = run(_recipe(tmp_path, video, frames=frames, sampler={"steps": 3, "cfg_merge": True}), longcat_env)
    apart = run(_recipe(tmp_path, video, frames=frames, sampler={"steps": 3}), longcat_env)
    assert merged.results["denoise"].key != apart.results["denoise"].key  # the batched sums may round apart
