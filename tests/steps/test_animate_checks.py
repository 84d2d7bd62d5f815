"""Wan2.2-Animate's bad inputs are refused at validation, before any model loads, naming the key.

Driving videos that disagree in frame count or size, a face video that is not square crops, a
grey mask, a driving video shorter than the clip, the wrong inputs for the mode, settings the
family does not have, and a training stage.
"""

from __future__ import annotations

import numpy as np
import pytest

import wanflow

FAMILY = "wan2.2-animate-14b"


def _video(path, frames: int, size=(16, 16), value: int | None = None):
    from wanflow.output import save_mp4

    if value is None:
        pixels = np.random.default_rng(frames).integers(0, 256, (frames, size[1], size[0], 3), dtype=np.uint8)
    else:
        pixels = np.zeros((frames, size[1], size[0], 3), np.uint8)
        pixels[:, : size[1] // 2] = value  # the top half: white (255) on a mask, or grey
    save_mp4(pixels, path, 8, {}, quality=0)
    return path.name


@pytest.fixture()
def folder(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 12, 3), 90, np.uint8)).save(tmp_path / "ref.png")
    _video(tmp_path / "pose.mp4", 9)
    _video(tmp_path / "face.mp4", 9, (24, 24))
    _video(tmp_path / "bg.mp4", 9)
    _video(tmp_path / "mask.mp4", 9, value=255)
    return tmp_path


def _recipe(folder, inputs: str, model: str = FAMILY, extra: str = "") -> list[str]:
    path = folder / "r.toml"
    path.write_text(f'model = "{model}"\n[prompt]\ntext = "x"\n[video]\nwidth = 16\nheight = 16\nframes = 9\n'
                    f'{extra}[inputs]\nreference_image = "ref.png"\npose_video = "pose.mp4"\n'
                    f'face_video = "face.mp4"\n{inputs}')
    return wanflow.validate(path)


def _has(problems: list[str], *words: str) -> bool:
    """Whether a problem holds every one of ``words`` (the recipe's path is absolute, its file
    name shortened in the message)."""
    return any(all(w in p for w in words) for p in problems)


def test_good_recipes_of_both_modes_validate(folder):
    assert _recipe(folder, "") == []
    assert _recipe(folder, 'animate_mode = "replacement"\nbackground_video = "bg.mp4"\nmask = "mask.mp4"\n') == []


def test_driving_videos_whose_frame_counts_disagree_are_refused(folder):
    _video(folder / "face.mp4", 13, (24, 24))
    problems = _recipe(folder, "")
    assert _has(problems, 'r.toml: [inputs].face_video = ', '13 frames, but [inputs].pose_video has 9'), problems
    _video(folder / "face.mp4", 9, (24, 24))
    _video(folder / "mask.mp4", 17, value=255)
    problems = _recipe(folder, 'animate_mode = "replacement"\nbackground_video = "bg.mp4"\nmask = "mask.mp4"\n')
    assert _has(problems, 'r.toml: [inputs].mask = ', '17 frames, but [inputs].pose_video has 9'), problems


def test_a_driving_video_shorter_than_the_clip_is_refused(folder):
    problems = _recipe(folder, "", extra="")
    assert problems == []
    (folder / "r.toml").write_text((folder / "r.toml").read_text().replace("frames = 9", "frames = 13"))
    problems = wanflow.validate(folder / "r.toml")
    assert _has(problems, 'r.toml: [inputs].pose_video = ', 'the video has 9 frames, fewer than the 13'), problems


def test_driving_videos_whose_sizes_disagree_are_refused(folder):
    _video(folder / "bg.mp4", 9, (32, 16))
    problems = _recipe(folder, 'animate_mode = "replacement"\nbackground_video = "bg.mp4"\nmask = "mask.mp4"\n')
    assert _has(problems, 'r.toml: [inputs].background_video = ', '32x16 pixels, but [inputs].pose_video '
                'is 16x16'), problems
    _video(folder / "face.mp4", 9, (24, 16))
    assert _has(_recipe(folder, ""), 'r.toml: [inputs].face_video = ', '24x16 pixels; the face video '
                'holds square face crops')


def test_a_mask_that_is_not_black_and_white_is_refused(folder):
    _video(folder / "mask.mp4", 9, value=128)
    problems = _recipe(folder, 'animate_mode = "replacement"\nbackground_video = "bg.mp4"\nmask = "mask.mp4"\n')
    assert _has(problems, 'r.toml: [inputs].mask = ', 'not a black-and-white mask: 50% of its pixels '
                'are grey'), problems


def test_each_mode_takes_its_own_inputs(folder):
    problems = _recipe(folder, 'animate_mode = "replacement"\n')
    assert _has(problems, 'r.toml: [inputs].background_video: is required by animate_mode = "replacement"'), problems
    assert _has(problems, 'r.toml: [inputs].mask: is required by animate_mode = "replacement"'), problems
    problems = _recipe(folder, 'background_video = "bg.mp4"\nmask = "mask.mp4"\nrelighting_lora = true\n')
    for key in ("background_video", "mask", "relighting_lora"):
        assert _has(problems, f"r.toml: [inputs].{key} = ", 'is read only by animate_mode = "replacement"'), problems


def test_unknown_modes_and_overlaps_are_refused(folder):
    problems = _recipe(folder, 'animate_mode = "dance"\n')
    assert _has(problems, 'r.toml: [inputs].animate_mode = ', 'choose "animation"'), problems
    problems = _recipe(folder, "overlap_frames = 3\n")
    assert _has(problems, "r.toml: [inputs].overlap_frames = 3: must be 1 or 5"), problems


def test_other_families_refuse_animate_settings(folder):
    path = folder / "t2v.toml"
    path.write_text('model = "wan2.1-t2v-1.3b"\n[prompt]\ntext = "x"\n[inputs]\nanimate_mode = "animation"\n'
                    'overlap_frames = 5\nbackground_video = "bg.mp4"\n')
    problems = wanflow.validate(path)
    for key in ("animate_mode", "overlap_frames", "background_video"):
        assert _has(problems, f"t2v.toml: [inputs].{key} = ", "wan2.1-t2v-1.3b does not take"), problems


def test_what_the_clip_loop_cannot_honour_is_refused(folder):
    problems = _recipe(folder, "", extra='[sampler]\nsliding_window_size = 5\n[sampler.cache]\nmethod = "teacache"\n'
                                          "threshold = 0.1\n[memory]\nfp8 = true\n")
    assert not _has(problems, "[memory].fp8"), problems  # a generation stores the blocks in fp8
    assert _has(problems, 'r.toml: [sampler.cache].method = "teacache": the Animate clip loop takes no step cache'), problems
    assert _has(problems, "r.toml: [sampler].sliding_window_size = 5: Animate runs long videos as clips"), problems
