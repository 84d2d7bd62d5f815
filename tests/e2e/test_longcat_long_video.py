"""LongCat-Video's long videos end to end: clips chained by continuation on the tiny release.

Each segment is the continuation of the clip before from its last frames: its conditioning
latents are the VAE latents of those decoded frames, its denoise equals the DiT and sampler
driven by hand from them with noise of seed + k, and the video is the first clip followed by
each segment's new frames. A longer chain reuses the shorter one's segments; settings that
cannot work are refused before anything runs.
"""

from __future__ import annotations

import pytest
import torch

from tests.e2e._layout_longcat import REPO, SHIFT
from tests.e2e._posterior import held
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe
from tests.e2e.test_longcat_runs import _executed
from wanflow.errors import WanflowError

FAMILY = "longcat-video"
COND = 5  # conditioning frames: 2 latent frames
SAMPLER = {"solver": "euler", "steps": 2, "shift": 1.0, "cfg": 2.0, "cfg_zero_star": False}
TEXTS = {"encode-text:positive", "encode-text:negative"}


def _segment(k: int) -> set[str]:
    return {f"encode-conditioning:segment-{k}", f"denoise:segment-{k}", f"decode:segment-{k}"}


@pytest.fixture()
def longcat_env(longcat_root, tmp_path, monkeypatch):
    return use_models(longcat_root, tmp_path, monkeypatch)


def _recipe(tmp_path, segments: int, frames: int = 9, train: dict | None = None, sampler: dict = SAMPLER,
            prompts: tuple[str, ...] = ()):
    import tomlkit

    tables = {"train": train} if train else {}
    path = write_recipe(tmp_path, FAMILY, video={"width": 16, "height": 16, "frames": frames}, sampler=sampler,
                        **tables)
    doc = tomlkit.parse(path.read_text())
    doc["inputs"] = {"longcat_segments": segments, "longcat_cond_frames": COND}
    if prompts:
        doc["inputs"]["longcat_segment_prompts"] = list(prompts)
    path.write_text(tomlkit.dumps(doc))
    return path


def test_a_long_video_is_the_first_clip_then_each_segment_s_new_frames(longcat_env, tmp_path):
    first = run(_recipe(tmp_path, 2), longcat_env)
    assert computed(first) == TEXTS | {"denoise", "decode"} | _segment(1) | _segment(2) | {
        "join-segments", "save", "save-metadata"}
    assert video_shape(first.archive / "outputs" / "video.mp4") == (9 + 2 * (9 - COND), 16, 16)
    longer = run(_recipe(tmp_path, 3), longcat_env)  # the first clip and two segments come from the cache
    assert computed(longer) == _segment(3) | {"join-segments", "save", "save-metadata"}
    assert video_shape(longer.archive / "outputs" / "video.mp4") == (9 + 3 * (9 - COND), 16, 16)


@pytest.mark.parametrize("config", ["diffsynth", "authors", "prompts"])
def test_each_segment_continues_the_one_before_as_a_continuation_by_hand(longcat_env, longcat_root, tmp_path, config):
    """Under the authors' sampler each segment walks generate_vc's grid, the enhance_hf tail included;
    with segment prompts each segment is guided by its own prompt's features."""
    from wanflow.memory import pool as model_pool
    from wanflow.models.longcat_loader import load_longcat_dit
    from wanflow.output import to_model_video
    from wanflow.sampling import initial_noise
    from wanflow.sampling.longcat import longcat_schedule
    from wanflow.sampling.schedules import euler_schedule

    dit = load_longcat_dit(longcat_root / REPO / "dit").eval()
    if config == "authors":
        sampler, schedule, cfg = {"steps": 3}, longcat_schedule(3, SHIFT), 4.0
    else:
        sampler, schedule, cfg = SAMPLER, euler_schedule(2, 1.0), 2.0
    prompts = ("the ball rolls left", "the ball stops") if config == "prompts" else ()
    for _, ex in _executed(_recipe(tmp_path, 0 if prompts else 2, sampler=sampler, prompts=prompts), keep={"decode"}):
        vae = model_pool.vae(ex.plan.get("decode").spec.weights["vae"].path, "wan2.1", torch.float32, "cpu")
        pos, neg = ex.load("encode-text:positive")["context"], ex.load("encode-text:negative")["context"]
        clips = [ex.load("decode")["frames"]]
        for k in (1, 2):
            before = ex.load("decode" if k == 1 else f"decode:segment-{k - 1}")["frames"]
            cond = ex.load(f"encode-conditioning:segment-{k}")["latents"]
            pixels = torch.from_numpy(to_model_video(before[-COND:].numpy()))[None]
            expected = held(vae, pixels, config == "authors", 0, f"encode-conditioning:segment-{k}")  # sample, mean
            assert torch.allclose(cond, expected, atol=1e-5, rtol=0)
            x = initial_noise((1, 16, 3, 2, 2), k, noise_device="cpu")[:, :, 2:]  # seed 0 + k
            own = ex.load(f"encode-text:segment-{k}")["context"] if prompts else pos
            assert torch.equal(own, pos) != bool(prompts)
            for i, t in enumerate(schedule.timesteps):
                with torch.no_grad():
                    vc, vu = (-dit(torch.cat([cond, x], dim=2), t.reshape(1), c, cond_frames=2)[:, :, 2:]
                              for c in (own, neg))
                st = (vc * vu).sum() / (vu.pow(2).sum() + 1e-8) if config == "authors" else 1.0
                x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (st * vu + cfg * (vc - st * vu))
            ours = ex.load(f"denoise:segment-{k}")["latents"]
            assert torch.equal(ours[:, :, :2], cond)
            assert torch.allclose(ours[:, :, 2:], x, rtol=1e-5, atol=1e-5), (ours[:, :, 2:] - x).abs().max()
            clips.append(ex.load(f"decode:segment-{k}")["frames"])
        joined = ex.load("join-segments")["frames"]
        assert torch.equal(joined, torch.cat([clips[0], clips[1][COND:], clips[2][COND:]]))


@pytest.mark.parametrize("segments, frames, train, message", [
    (1, 5, None, "leaves no frame to generate after the 5 conditioning frames"),
    (1, 9, {"dataset": "data.csv"}, "which a training stage does not make"),
])
def test_a_long_video_that_cannot_work_is_refused(longcat_env, tmp_path, segments, frames, train, message):
    from wanflow.recipe import load_recipe

    with pytest.raises(WanflowError) as err:
        load_recipe(_recipe(tmp_path, segments, frames, train))
    assert message in str(err.value)


def test_other_families_cannot_take_segments(env, tmp_path):
    from wanflow.recipe import load_recipe

    path = write_recipe(tmp_path, "wan2.1-t2v-1.3b", {})
    path.write_text(path.read_text() + "\n[inputs]\nlongcat_segments = 2\n")
    with pytest.raises(WanflowError, match="longcat_segments.*read by longcat-video only"):
        load_recipe(path)


def test_a_long_video_may_start_from_a_continuation_and_is_planned(longcat_env, tmp_path):
    import tomlkit

    from tests.e2e.test_longcat_runs import _write_video
    from wanflow.cli import main

    _write_video(tmp_path / "past.mp4", 11, 21)
    path = _recipe(tmp_path, 1)
    doc = tomlkit.parse(path.read_text())
    doc["inputs"]["longcat_video"] = str(tmp_path / "past.mp4")
    path.write_text(tomlkit.dumps(doc))
    outcome = run(path, longcat_env)
    assert computed(outcome) == TEXTS | {"encode-conditioning:longcat-frames", "denoise", "decode"} | _segment(1) | {
        "join-segments", "save", "save-metadata"}
    assert video_shape(outcome.archive / "outputs" / "video.mp4") == (9 + (9 - COND), 16, 16)
    assert main(["plan", str(path)]) == 0  # the memory plan sizes the segments' denoise with its conditioning


def test_segment_prompts_set_the_count_and_a_changed_prompt_reruns_only_its_segments(longcat_env, tmp_path):
    first = run(_recipe(tmp_path, 0, prompts=("a ball rolls", "it stops", "it rolls back")), longcat_env)
    assert {"encode-text:segment-1", "encode-text:segment-3", "denoise:segment-3"} <= computed(first)
    assert video_shape(first.archive / "outputs" / "video.mp4") == (9 + 3 * (9 - COND), 16, 16)
    changed = run(_recipe(tmp_path, 0, prompts=("a ball rolls", "it stops", "it spins")), longcat_env)
    assert computed(changed) == _segment(3) - {"encode-conditioning:segment-3"} | {
        "encode-text:segment-3", "join-segments", "save", "save-metadata"}


@pytest.mark.parametrize("segments, prompts, message", [
    (3, ("one", "two"), "gives 2 prompts for [inputs].longcat_segments = 3 segments"),
    (0, ("one", " "), "prompt 1 is empty"),
])
def test_segment_prompts_that_do_not_fit_are_refused(longcat_env, tmp_path, segments, prompts, message):
    from wanflow.recipe import load_recipe

    with pytest.raises(WanflowError) as err:
        load_recipe(_recipe(tmp_path, segments, prompts=prompts))
    assert message in str(err.value)
