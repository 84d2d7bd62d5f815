"""Bad conditioning input is refused at validation, naming the recipe key and the fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tests.conditioners._standins import FRAMES, write_video
from wanflow.recipe import load_recipe
from wanflow.steps.checks import unsupported
from wanflow.steps.input_checks import input_problems

I2V = 'model = "wan2.1-i2v-14b-480p"\n[prompt]\ntext = "a cat"\n[inputs]\nimage = "photo.png"\n'


def checked(inputs: dict[str, Path], frames: int = FRAMES) -> list[str]:
    """The input problems of a recipe setting ``inputs`` (as validation sees the resolved values)."""
    values = {"video.frames": frames, "sampler.denoising_strength": 1.0,
              **{f"inputs.{k}": str(v) for k, v in inputs.items()}}
    resolved = SimpleNamespace(values=values, recipe=SimpleNamespace(models={}), family=None)
    return input_problems(resolved, lambda key: "r.toml")


def test_a_control_video_shorter_than_the_clip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "pose.mp4", 7, seed=1)
    assert checked({"control_video": tmp_path / "pose.mp4"}) == [
        'r.toml: [inputs].control_video = "pose.mp4": the video has 7 frames, fewer than the 9 of '
        "[video].frames (the control video steers each output frame with one of its own); use a longer "
        "video or set [video].frames = 5 (the largest 4n+1 ≤ 7)"]
    assert checked({"control_video": tmp_path / "pose.mp4"}, frames=5) == []


def test_a_mask_of_another_size_than_its_video(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "clip.mp4", FRAMES, seed=1, size=(32, 16))
    Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
    found = checked({"control_video": tmp_path / "clip.mp4", "mask": tmp_path / "mask.png"})
    assert found == ['r.toml: [inputs].mask = "mask.png": the mask is 32x32 pixels and [inputs].control_video '
                     "is 32x16; use a mask of the video's size, so that it marks the same pixels once both "
                     "are resized to [video].width x height"]
    write_video(tmp_path / "mask.mp4", FRAMES, seed=2, size=(32, 16))
    assert checked({"control_video": tmp_path / "clip.mp4", "mask": tmp_path / "mask.mp4"}) == []


def test_an_image_with_transparent_pixels(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.toml").write_text(I2V, encoding="utf-8")
    rgba = np.full((8, 8, 4), 200, np.uint8)
    rgba[:, :, 3] = 255
    rgba[:2, :, 3] = 0  # two transparent rows
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    found = unsupported(load_recipe(tmp_path / "r.toml"))
    assert found == ['r.toml: [inputs].image = "photo.png": the image has an alpha channel with 16 transparent '
                     "pixels, which the model would see as whatever colour they hold; flatten it onto the "
                     "background you want (e.g. white) and save it as RGB"]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ref.png")
    assert "[inputs].reference_image" in checked({"reference_image": tmp_path / "ref.png"})[0]
    rgba[:, :, 3] = 255  # an alpha channel that hides nothing is read as it is
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    assert unsupported(load_recipe(tmp_path / "r.toml")) == []
