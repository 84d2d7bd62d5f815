"""Wan2.2-S2V's release options on tiny weights: ``[inputs].start_from_ref`` and ``num_clip``.

``start_from_ref`` (the release's ``--start_from_ref``): the last 6 of the 73 zero frames before
the video are the reference image, prepared as the reference is, and the first clip keeps its
motion tokens and decodes after them (no 3 frames dropped); the run equals the tiny DiT and VAE
driven by hand that way, the reference frames staying in the rolled context of the second clip,
and a motion video of those frames gives the same bits.
``num_clip``: N clips are the first N of the whole run, bit for bit, and the mp4 and its sound
end with them. Each re-runs the denoise step (and start_from_ref its motion encode), never the
text or audio encodes.
"""

from __future__ import annotations

import numpy as np
import tomlkit
import torch

from tests.e2e import test_s2v_runs
from tests.e2e._run import computed, run, video_shape
from tests.e2e.test_s2v_runs import (
    AFTER,
    CLIP,
    FPS,
    SAMPLER,
    _ByHand,
    _executed,
    _recipe,
    _seconds,
)

# the S2V runs' fixtures: the tiny checkpoints, the recordings and videos, the run folder
s2v_root, media, s2v_env = test_s2v_runs.s2v_root, test_s2v_runs.media, test_s2v_runs.s2v_env


def _with(recipe, **values):
    """``recipe`` with typed [inputs] values (write_recipe quotes what it is given)."""
    doc = tomlkit.parse(recipe.read_text())
    for key, value in values.items():
        doc["inputs"][key] = value
    recipe.write_text(tomlkit.dumps(doc))
    return recipe


def _reference_context(image) -> torch.Tensor:
    """The release's start_from_ref context: 67 zero frames, then 6 of the prepared reference image."""
    from wanflow.steps.media import image_tensor

    ref = image_tensor(image, 64, 64)  # (3, 1, 64, 64): shorter side, centre crop, [-1, 1]
    return torch.cat([torch.zeros(3, 67, 64, 64), ref.expand(3, 6, 64, 64)], dim=1)[None]


def test_start_from_ref_ends_the_zero_context_with_the_reference_and_keeps_the_first_motion(
        s2v_env, s2v_root, media, tmp_path):
    from wanflow.output import to_uint8_frames

    recipe = _with(_recipe(tmp_path, media, sampler=SAMPLER), start_from_ref=True)
    for resolved, ex in _executed(recipe):
        hand = _ByHand(s2v_root, ex, resolved)
        motion = ex.load("encode-conditioning:s2v-motion")
        context = _reference_context(media["first"])
        assert torch.equal(motion["frames"], context)
        assert torch.allclose(motion["latents"], hand.encode(context), atol=1e-5)
        found = ex.load("denoise")
        first = hand.clip(0, motion=motion["latents"])  # the first clip keeps its motion tokens
        assert torch.allclose(found["latents"][:, :, :2], first, rtol=1e-5, atol=1e-6)
        assert (first - hand.clip(0, motion=None)).abs().max() > 1e-3  # unlike the release's default
        video0 = hand.decode(torch.cat([motion["latents"], first], dim=2))  # all 8 frames: none dropped
        rolled = torch.cat([context[:, :, CLIP:], video0], dim=2)  # the reference frames are still in it
        second = hand.clip(1, motion=hand.encode(rolled))
        assert torch.allclose(found["latents"][:, :, 2:], second, rtol=1e-4, atol=1e-5), \
            (found["latents"][:, :, 2:] - second).abs().max()
        video1 = hand.decode(torch.cat([hand.encode(rolled), second], dim=2))
        joined = to_uint8_frames(torch.cat([video0, video1], dim=2)[0])[:12]  # cut to the recording's 12
        assert found["frames"].shape == (12, 64, 64, 3)
        assert np.abs(found["frames"].numpy().astype(int) - joined.astype(int)).max() <= 1


def test_num_clip_makes_the_first_clips_of_the_whole_run_bit_for_bit(s2v_env, media, tmp_path):
    for _, ex in _executed(_recipe(tmp_path, media, sampler=SAMPLER)):
        whole = ex.load("denoise")
    assert whole["latents"].shape[2] == 4 and whole["frames"].shape[0] == 12  # two clips
    recipe = _with(_recipe(tmp_path, media, sampler=SAMPLER), num_clip=1)
    for _, ex in _executed(recipe):
        one = ex.load("denoise")
        assert torch.equal(one["latents"], whole["latents"][:, :, :2])
        assert torch.equal(one["frames"], whole["frames"][:CLIP - 3])  # the first clip: 8 frames less 3
    outcome = run(recipe, s2v_env)
    video = outcome.archive / "outputs" / "video.mp4"
    frames, _, _ = video_shape(video)
    assert frames == 5 and abs(_seconds(video) - 5 / FPS) < 1 / FPS  # the sound cut to the clip, not 0.75 s


def test_a_first_clip_that_keeps_its_motion_keeps_all_its_frames(s2v_env, media, tmp_path):
    outcome = run(_with(_recipe(tmp_path, media, sampler=SAMPLER), num_clip=1, start_from_ref=True), s2v_env)
    video = outcome.archive / "outputs" / "video.mp4"
    assert video_shape(video)[0] == CLIP and abs(_seconds(video) - CLIP / FPS) < 1 / FPS  # 8 frames, none dropped


def test_each_option_reruns_the_denoise_step_never_the_text_or_audio_encodes(s2v_env, media, tmp_path):
    base = run(_recipe(tmp_path, media, sampler=SAMPLER), s2v_env)
    fewer = run(_with(_recipe(tmp_path, media, sampler=SAMPLER), num_clip=1), s2v_env)
    assert computed(fewer) == AFTER
    assert fewer.lock["outputs"] != base.lock["outputs"]
    same = run(_with(_recipe(tmp_path, media, sampler=SAMPLER), num_clip=2), s2v_env)
    assert computed(same) == AFTER  # keyed by its value: all the clips, but another setting
    from_ref = run(_with(_recipe(tmp_path, media, sampler=SAMPLER), start_from_ref=True), s2v_env)
    assert computed(from_ref) == {"encode-conditioning:s2v-motion", *AFTER}
    assert from_ref.lock["outputs"] != base.lock["outputs"]
    assert computed(run(_with(_recipe(tmp_path, media, sampler=SAMPLER), start_from_ref=False), s2v_env)) == set()
    # with start_from_ref the motion context holds the image: a new image re-encodes it too
    other = _recipe(tmp_path, media, inputs={"image": media["last"]}, sampler=SAMPLER)
    assert computed(run(_with(other, start_from_ref=True), s2v_env)) == {
        "encode-conditioning:s2v-reference", "encode-conditioning:s2v-motion", *AFTER}
    assert computed(run(_with(other, start_from_ref=False), s2v_env)) == AFTER  # the zero context is reused


def test_num_clip_encodes_only_the_pose_of_its_clips(s2v_env, media, tmp_path):
    posed = {"s2v_pose_video": media["pose"]}
    for _, ex in _executed(_recipe(tmp_path, media, inputs=posed, sampler=SAMPLER)):
        pose, whole = ex.load("encode-conditioning:s2v-pose")["latents"], ex.load("denoise")["latents"]
    for _, ex in _executed(_with(_recipe(tmp_path, media, inputs=posed, sampler=SAMPLER), num_clip=1)):
        assert torch.equal(ex.load("encode-conditioning:s2v-pose")["latents"], pose[:, :, :2])
        assert torch.equal(ex.load("denoise")["latents"], whole[:, :, :2])


def test_start_from_ref_is_a_motion_video_of_zero_frames_ending_in_the_reference(s2v_env, media, tmp_path,
                                                                                  monkeypatch):
    """Bit for bit over two clips. The motion video's pixels are handed over as read: its frames
    are uint8, and the release's zero is 127.5 of 255, which no video file holds."""
    from wanflow.steps import s2v_checks

    found = []
    for _, ex in _executed(_with(_recipe(tmp_path, media, sampler=SAMPLER), start_from_ref=True)):
        found.append(ex.load("denoise"))
    monkeypatch.setattr(s2v_checks, "read_motion_video", lambda *a: _reference_context(media["first"])[0])
    for _, ex in _executed(_recipe(tmp_path, media, inputs={"motion_video": media["motion"]}, sampler=SAMPLER)):
        found.append(ex.load("denoise"))
    ref, video = found
    assert torch.equal(ref["latents"], video["latents"]) and torch.equal(ref["frames"], video["frames"])
