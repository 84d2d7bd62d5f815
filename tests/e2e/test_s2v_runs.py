"""Wan2.2-S2V-14B end to end on tiny weights in the release's layout.

A run makes an mp4 as long as the recording that carries it as its audio track; the clip loop's
latents equal the tiny S2VDiT driven by hand for one Euler step per clip (the first clip without
motion tokens, the second with the latents of the 73 frames rolled after the first, the
unconditional pass with the negative prompt and silent buckets), and its frames equal the VAE's
decode of [reference | motion, latents]; a new recording re-runs its encode and what follows,
never the text encodes, and a pose video only its own encode and what follows.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch

from tests.audio._sound import tone, write_wav
from tests.e2e._layout_s2v import REPO, write_s2v_models_root
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe

FAMILY = "wan2.2-s2v-14b"
RATE, FPS, CLIP = 16000, 16, 8  # [video].frames = 9: clips of 8 frames, 2 latent frames
ENCODES = {"encode-text:positive", "encode-text:negative", "encode-audio", "encode-conditioning:s2v-reference",
           "encode-conditioning:s2v-motion"}
AFTER = {"denoise", "save", "save-metadata"}
CFG, SHIFT = 4.5, 3.0


def _speech(seconds: float, seed: int) -> np.ndarray:
    """A voiced tone with noise: loud enough to count as sound, different per seed."""
    noise = np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * 0.05
    return (tone(180 + 40 * seed, seconds, RATE, 0.4) + noise).clip(-1, 1)


def _video(path, frames: int, size: tuple[int, int], seed: int) -> None:
    from wanflow.output import save_mp4

    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    save_mp4(pixels, path, FPS, {}, quality=0)


@pytest.fixture(scope="session")
def s2v_root(tmp_path_factory):
    return write_s2v_models_root(tmp_path_factory.mktemp("s2v-models"))


@pytest.fixture(scope="session")
def media(tmp_path_factory, images):
    return write_media(tmp_path_factory.mktemp("s2v-inputs"), images)


def write_media(folder, images) -> dict:
    """Recordings of one clip and of two, a pose and a motion video, beside ``images``."""
    out = dict(images)
    # 0.3 s: one clip (5 frames cover its 4.8); 0.75 s: two clips (13 frames cover its 12)
    for name, seconds, seed in (("short", 0.3, 0), ("speech", 0.75, 1), ("speech2", 0.75, 2)):
        out[name] = write_wav(folder / f"{name}.wav", _speech(seconds, seed), RATE)
    out["pose"] = folder / "pose.mp4"
    _video(out["pose"], 2 * CLIP, (56, 40), 5)  # the reference image's 56x40, two clips of frames
    out["motion"] = folder / "motion.mp4"
    _video(out["motion"], 80, (64, 64), 6)
    return out


@pytest.fixture()
def s2v_env(s2v_root, tmp_path, monkeypatch):
    return use_models(s2v_root, tmp_path, monkeypatch)


def _recipe(tmp_path, media, audio="speech", inputs=None, **tables):
    files = {"image": media["first"], "audio": media[audio], **(inputs or {})}
    tables = {"video": {"width": 64, "height": 64, "frames": 9}, **tables}
    return write_recipe(tmp_path, FAMILY, files, **tables)


def _seconds(path) -> float:
    from wanflow.audio.decode import decode_audio

    return decode_audio(path, RATE).duration_s


def test_the_run_makes_an_mp4_as_long_as_the_recording_with_it_as_the_sound(s2v_env, media, tmp_path):
    recipe = _recipe(tmp_path, media)
    first = run(recipe, s2v_env)
    assert computed(first) == set(first.results) == ENCODES | AFTER
    video = first.archive / "outputs" / "video.mp4"
    frames, width, height = video_shape(video)
    assert (width, height) == (64, 64)
    assert frames == math.ceil(0.75 * FPS) == 12  # two clips (13 frames) cut to the recording
    heard = _seconds(video)  # the mp4's own audio stream, decoded
    assert abs(heard - 0.75) < 1 / FPS and abs(frames / FPS - heard) < 1 / FPS
    assert computed(run(recipe, s2v_env)) == set()


def test_a_new_recording_reruns_its_encode_and_what_follows_never_the_text(s2v_env, media, tmp_path):
    first = run(_recipe(tmp_path, media), s2v_env)
    again = run(_recipe(tmp_path, media, audio="speech2"), s2v_env)
    assert computed(again) == {"encode-audio", *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]
    posed = run(_recipe(tmp_path, media, inputs={"s2v_pose_video": media["pose"]}), s2v_env)
    assert computed(posed) == {"encode-conditioning:s2v-pose", *AFTER}


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
        plan = attrs.evolve(plan, steps=tuple(s for s in plan.steps if s.name not in {"save", "save-metadata"}))
        ex = Executor(plan, cache)
        ex.run()
        yield resolved, ex


class _ByHand:
    """The clip loop written out: the tiny DiT and VAE called directly on the run's own encodes."""

    def __init__(self, root, ex, resolved):
        from wanflow.memory import pool as model_pool
        from wanflow.models.s2v_loader import load_s2v_dit
        from wanflow.sampling import BUILTIN_SOLVERS, make_schedule
        from wanflow.steps.conditioning import tile_spec

        self.dit = load_s2v_dit(root / REPO).eval()
        self.vae = model_pool.vae(root / REPO / "Wan2.1_VAE.pth", "wan2.1", torch.float32, "cpu")
        self.tile = tile_spec(resolved.values)
        self.schedule = make_schedule(BUILTIN_SOLVERS["euler"], 1, SHIFT, 1.0)
        self.ex = ex
        self.buckets = ex.load("encode-audio")["buckets"]
        self.ref = ex.load("encode-conditioning:s2v-reference")["latent"]

    def clip(self, r: int, motion, negative: str = "encode-text:negative", pose=None):
        """One Euler step of clip r under CFG: the prompt with the clip's buckets, the negative
        prompt with them silenced."""
        from wanflow.models.s2v import S2VExtras, silent_audio
        from wanflow.sampling import initial_noise

        x = initial_noise((1, 16, 2, 8, 8), r, noise_device="cpu")
        t = self.schedule.timesteps[0].reshape(1)
        audio = self.buckets[..., r * CLIP:(r + 1) * CLIP]

        def velocity(prompt, buckets):
            extras = S2VExtras(audio=buckets, ref_latent=self.ref, pose=pose, motion=motion)
            with torch.no_grad():
                return self.dit(x, t, self.ex.load(prompt)["context"], extras=extras)

        cond = velocity("encode-text:positive", audio)
        uncond = velocity(negative, silent_audio(audio))
        return x + (self.schedule.sigma(1) - self.schedule.sigma(0)) * (uncond + CFG * (cond - uncond))

    def decode(self, latents):
        with torch.no_grad():
            return self.vae.decode(latents, tile=self.tile)[:, :, -CLIP:]

    def encode(self, pixels):
        with torch.no_grad():
            return self.vae.encode(pixels, tile=self.tile)


SAMPLER = {"solver": "euler", "steps": 1, "shift": SHIFT, "cfg": CFG}


def test_one_clip_equals_a_hand_driven_step_of_the_tiny_dit(s2v_env, s2v_root, media, tmp_path):
    from wanflow.output import to_uint8_frames

    for resolved, ex in _executed(_recipe(tmp_path, media, audio="short", sampler=SAMPLER)):
        hand = _ByHand(s2v_root, ex, resolved)
        found = ex.load("denoise")
        assert hand.buckets.shape == (1, 25, 24, CLIP)  # one clip
        expected = hand.clip(0, motion=None)  # the first clip drops its motion tokens
        assert found["latents"].shape == expected.shape == (1, 16, 2, 8, 8)
        assert torch.allclose(found["latents"], expected, rtol=1e-5, atol=1e-6), (found["latents"] - expected).abs().max()
        # the unconditional pass reads the negative prompt, not the prompt
        assert (found["latents"] - hand.clip(0, motion=None, negative="encode-text:positive")).abs().max() > 1e-3
        video = hand.decode(torch.cat([hand.ref, expected], dim=2))[:, :, 3:]  # 3 frames of the reference's latent
        assert found["frames"].shape == (5, 64, 64, 3)  # 0.3 s at 16 fps: 4.8 frames, 5 made
        assert np.abs(found["frames"].numpy().astype(int) - to_uint8_frames(video[0]).astype(int)).max() <= 1


def test_two_clips_carry_the_motion_frames_of_the_first_into_the_second(s2v_env, s2v_root, media, tmp_path):
    from wanflow.output import to_uint8_frames

    for resolved, ex in _executed(_recipe(tmp_path, media, sampler=SAMPLER)):
        hand = _ByHand(s2v_root, ex, resolved)
        found = ex.load("denoise")
        first = hand.clip(0, motion=None)
        video0 = hand.decode(torch.cat([hand.ref, first], dim=2))[:, :, 3:]  # (1, 3, 5, 64, 64)
        context = torch.cat([torch.zeros(1, 3, 73 - 5, 64, 64), video0], dim=2)  # the 73 frames before clip 1
        motion = hand.encode(context)  # (1, 16, 19, 8, 8)
        second = hand.clip(1, motion=motion)
        assert found["latents"].shape == (1, 16, 4, 8, 8)
        assert torch.allclose(found["latents"][:, :, :2], first, rtol=1e-5, atol=1e-6)
        assert torch.allclose(found["latents"][:, :, 2:], second, rtol=1e-4, atol=1e-5), \
            (found["latents"][:, :, 2:] - second).abs().max()
        # the carried motion matters: without it (or with the zero context) clip 1 differs
        assert (second - hand.clip(1, motion=None)).abs().max() > 1e-3
        assert (second - hand.clip(1, motion=hand.encode(torch.zeros(1, 3, 73, 64, 64)))).abs().max() > 1e-4
        video1 = hand.decode(torch.cat([motion, second], dim=2))
        joined = to_uint8_frames(torch.cat([video0, video1], dim=2)[0])[:12]  # cut to the recording's 12
        assert found["frames"].shape == (12, 64, 64, 3)
        assert np.abs(found["frames"].numpy().astype(int) - joined.astype(int)).max() <= 1


def test_a_motion_video_is_the_context_the_first_clip_continues(s2v_env, s2v_root, media, tmp_path):
    from wanflow.steps.s2v_checks import read_motion_video

    recipe = _recipe(tmp_path, media, audio="short", inputs={"motion_video": media["motion"]}, sampler=SAMPLER)
    for resolved, ex in _executed(recipe):
        hand = _ByHand(s2v_root, ex, resolved)
        motion = ex.load("encode-conditioning:s2v-motion")
        last = read_motion_video(media["motion"], 64, 64, FPS)  # its last 73 frames
        assert torch.equal(motion["frames"][0], last)
        assert torch.allclose(motion["latents"], hand.encode(last[None]), atol=1e-5)
        expected = hand.clip(0, motion=motion["latents"])  # the first clip keeps its motion tokens
        assert torch.allclose(ex.load("denoise")["latents"], expected, rtol=1e-5, atol=1e-6)


def test_the_pose_video_is_encoded_clip_by_clip_behind_a_copy_of_each_first_frame(s2v_env, s2v_root, media,
                                                                                    tmp_path):
    from wanflow.output import load_video, to_model_video

    recipe = _recipe(tmp_path, media, inputs={"s2v_pose_video": media["pose"]}, sampler=SAMPLER)
    for resolved, ex in _executed(recipe):
        hand = _ByHand(s2v_root, ex, resolved)
        pose = ex.load("encode-conditioning:s2v-pose")["latents"]
        pixels = torch.from_numpy(to_model_video(load_video(media["pose"], 2 * CLIP, 64, 64, fps=FPS)))
        for r in range(2):
            part = pixels[:, r * CLIP:(r + 1) * CLIP]
            expected = hand.encode(torch.cat([part[:, :1], part], dim=1)[None])[:, :, 1:]
            assert torch.allclose(pose[:, :, 2 * r:2 * r + 2], expected, atol=1e-5)
        first = hand.clip(0, motion=None, pose=pose[:, :, :2])
        assert torch.allclose(ex.load("denoise")["latents"][:, :, :2], first, rtol=1e-5, atol=1e-6)
        assert (first - hand.clip(0, motion=None)).abs().max() > 1e-3  # the pose reaches the DiT


def test_precomputed_buckets_stand_in_for_the_speech_encoder(s2v_env, media, tmp_path):
    from safetensors.torch import save_file

    latents = []
    for _, ex in _executed(_recipe(tmp_path, media, sampler=SAMPLER)):
        buckets = ex.load("encode-audio")["buckets"]  # (1, 25, 24, 16): two clips
        latents.append(ex.load("denoise")["latents"])
    embeds = tmp_path / "embeds.safetensors"
    save_file({"audio_embeds": torch.cat([buckets, buckets[..., :3]], dim=-1)}, str(embeds))  # extra frames: unread
    recipe = _recipe(tmp_path, media, inputs={"audio_embeds": embeds}, sampler=SAMPLER)
    for resolved, ex in _executed(recipe):
        assert "speech_encoder.0" not in ex.plan.get("encode-audio").spec.weights  # wav2vec2 never read
        assert torch.equal(ex.load("encode-audio")["buckets"], buckets)
        assert torch.equal(ex.load("denoise")["latents"], latents[0])
    first = run(recipe, s2v_env)
    save_file({"audio_embeds": torch.cat([buckets * 0.5, buckets[..., :3]], dim=-1)}, str(embeds))
    again = run(recipe, s2v_env)
    assert computed(again) == {"encode-audio", *AFTER}  # the file's content is in the key
    assert again.lock["outputs"] != first.lock["outputs"]


def test_a_killed_clip_loop_resumes_at_the_next_clip_bit_for_bit(s2v_env, media, tmp_path, monkeypatch):
    from tests.steps._ctx import Ctx, Stop
    from wanflow.steps import denoise_s2v

    sampled = []
    real = denoise_s2v._ClipLoop._sample
    monkeypatch.setattr(denoise_s2v._ClipLoop, "_sample", lambda self, r, *a: sampled.append(r) or real(self, r, *a))
    for resolved, ex in _executed(_recipe(tmp_path, media, sampler=SAMPLER)):
        node = ex.plan.get("denoise").spec
        inputs = {role: ex.load(name) for role, name in node.inputs.items()}
        weights = {role: w.path for role, w in node.weights.items()}
        whole = ex.load("denoise")
        killed = Ctx(dict(resolved.values), inputs, weights, stop_after=1)
        sampled.clear()
        with pytest.raises(Stop):
            node.step.run(killed)
        assert sampled == [0] and killed.partial[0] == 1  # the first clip checkpointed
        resumed = node.step.run(Ctx(dict(resolved.values), inputs, weights, partial=killed.partial))
        assert sampled == [0, 1]  # only the second clip ran again
        assert torch.equal(resumed["latents"], whole["latents"]) and torch.equal(resumed["frames"], whole["frames"])
