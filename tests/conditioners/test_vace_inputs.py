"""Bad [inputs.vace] is refused at validation, before any model loads, naming the key and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conditioners._standins import FRAMES, write_video
from wanflow.errors import RecipeError
from wanflow.recipe import load_recipe
from wanflow.steps.checks import unsupported

HEAD = ('model = "wan2.1-vace-1.3b"\n[prompt]\ntext = "a cat"\n[video]\nwidth = 32\nheight = 16\n'
        f"frames = {FRAMES}\n[inputs.vace]\n")


def problems(tmp_path, vace: str) -> list[str]:
    (tmp_path / "r.toml").write_text(HEAD + vace, encoding="utf-8")
    return unsupported(load_recipe(tmp_path / "r.toml"))


def test_a_scale_that_is_not_a_number(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.toml").write_text(HEAD + "scale = nan\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"r.toml: \[inputs.vace\].scale = nan"):
        load_recipe(tmp_path / "r.toml")
    assert problems(tmp_path, "scale = inf\n") == [
        "r.toml: [inputs.vace].scale = inf: must be a finite number ≥ 0 (1.0 adds the VACE hints at full strength)"]
    assert problems(tmp_path, "scale = 0.5\n") == []


def test_a_vace_video_shorter_than_the_clip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "depth.mp4", 7, seed=1)
    assert problems(tmp_path, 'video = "depth.mp4"\n') == [
        'r.toml: [inputs.vace].video = "depth.mp4": the video has 7 frames, fewer than the 9 of [video].frames '
        "(VACE reads one video frame per output frame); use a longer video or set [video].frames = 5 (the "
        "largest 4n+1 ≤ 7)"]


def test_a_mask_of_another_size_than_the_vace_video(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "clip.mp4", FRAMES, seed=1, size=(32, 16))
    Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
    assert problems(tmp_path, 'video = "clip.mp4"\nmask = "mask.png"\n') == [
        'r.toml: [inputs.vace].mask = "mask.png": the mask is 32x32 pixels and [inputs.vace].video is 32x16; use '
        "a mask of the video's size, so that it marks the same pixels once both are resized to [video].width x "
        "height"]
    Image.new("L", (32, 16), 255).save(tmp_path / "mask.png")
    assert problems(tmp_path, 'video = "clip.mp4"\nmask = "mask.png"\n') == []


def test_a_mask_video_shorter_than_the_clip_and_a_mask_without_video(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "clip.mp4", FRAMES, seed=1)
    write_video(tmp_path / "mask.mp4", 5, seed=2)
    found = problems(tmp_path, 'video = "clip.mp4"\nmask = "mask.mp4"\n')
    assert len(found) == 1 and found[0].startswith('r.toml: [inputs.vace].mask = "mask.mp4": the video has 5 frames')
    assert problems(tmp_path, 'mask = "mask.mp4"\n') == [
        'r.toml: [inputs.vace].mask = "mask.mp4": a mask marks which pixels of [inputs.vace].video to regenerate, '
        "and no video is set; set [inputs.vace].video, or remove the mask to generate every pixel"]


def test_a_reference_image_with_transparent_pixels(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    rgba = np.full((8, 8, 4), 200, np.uint8)
    rgba[:, :, 3] = 255
    rgba[:3, :, 3] = 0  # three transparent rows
    Image.fromarray(rgba, "RGBA").save(tmp_path / "subject.png")
    found = problems(tmp_path, 'reference = "subject.png"\n')
    assert found == ['r.toml: [inputs.vace].reference = "subject.png": the image has an alpha channel with 24 '
                     "transparent pixels, which the model would see as whatever colour they hold; flatten it "
                     "onto the background you want (e.g. white) and save it as RGB"]
    rgba[:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "subject.png")
    assert problems(tmp_path, 'reference = "subject.png"\n') == []
