"""Bad camera, motion-bucket and Fun input is refused at validation, naming the recipe key."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conditioners._standins import write_video
from wanflow.errors import RecipeError
from wanflow.recipe import load_recipe
from wanflow.steps.camera_poses import ORIGIN
from wanflow.steps.checks import unsupported

CAMERA = ('model = "wan2.1-fun-v1.1-1.3b-control-camera"\n[prompt]\ntext = "a cat"\n'
          '[video]\nframes = 5\n[inputs]\nimage = "photo.png"\n[inputs.camera]\n')


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (16, 16), (90, 120, 30)).save(tmp_path / "photo.png")
    return tmp_path


def refused(folder, text: str) -> str:
    (folder / "r.toml").write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(folder / "r.toml")
    return str(caught.value)


def problems(folder, text: str) -> list[str]:
    (folder / "r.toml").write_text(text, encoding="utf-8")
    return unsupported(load_recipe(folder / "r.toml"))


def test_a_direction_outside_the_list_and_a_speed_not_above_zero(folder):
    message = refused(folder, CAMERA + 'direction = "Spin"\n')
    assert "[inputs.camera].direction" in message and "Spin" in message and "LeftUp" in message
    for speed in ("0", "-0.01"):
        assert "[inputs.camera].speed" in refused(folder, CAMERA + f"speed = {speed}\n")
    assert problems(folder, CAMERA + 'direction = "RightDown"\nspeed = 0.01\n') == []


@pytest.mark.parametrize("bucket", [-1, 101])
def test_a_motion_bucket_outside_the_trained_range(folder, bucket):
    text = f'model = "wan2.1-1.3b-speedcontrol"\n[prompt]\ntext = "a cat"\n[inputs]\nmotion_bucket = {bucket}\n'
    message = refused(folder, text)
    assert "[inputs].motion_bucket" in message and str(bucket) in message


def test_a_malformed_pose_file(folder):
    (folder / "poses.txt").write_text("\n" + " ".join(map(str, ORIGIN[:12])) + "\n")
    found = problems(folder, CAMERA + 'pose_file = "poses.txt"\n')
    assert len(found) == 1
    assert found[0].startswith('r.toml: [inputs.camera].pose_file = "')
    assert "line 2 holds 12 numbers, not 19" in found[0] and "header line" in found[0]
    (folder / "poses.txt").write_text("\n" + ("".join(" ".join(map(str, ORIGIN)) + "\n" for _ in range(5))))
    assert problems(folder, CAMERA + 'pose_file = "poses.txt"\n') == []


def test_a_pose_file_beside_a_direction_is_refused_not_ignored(folder):
    (folder / "poses.txt").write_text("\n" + ("".join(" ".join(map(str, ORIGIN)) + "\n" for _ in range(5))))
    found = problems(folder, CAMERA + 'direction = "Up"\npose_file = "poses.txt"\n')
    assert found == [('r.toml: [inputs.camera].direction is set beside [inputs.camera].pose_file = "poses.txt", '
                      "which gives every pose itself; remove one of the two")]


def test_a_camera_family_requires_its_camera_and_a_control_family_its_video(folder):
    assert "[inputs].camera" in refused(folder, CAMERA.replace("[inputs.camera]\n", ""))
    text = 'model = "wan2.1-fun-1.3b-control"\n[prompt]\ntext = "a dog"\n'
    assert "[inputs].control_video" in refused(folder, text)


def test_a_short_control_video_and_a_transparent_reference_for_a_fun_family(folder):
    from PIL import Image

    write_video(folder / "depth.mp4", 3, seed=1)
    rgba = np.full((8, 8, 4), 200, np.uint8)
    rgba[:1, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "ref.png")
    text = ('model = "wan2.1-fun-v1.1-1.3b-control"\n[prompt]\ntext = "a dog"\n[video]\nframes = 5\n'
            '[inputs]\ncontrol_video = "depth.mp4"\nreference_image = "ref.png"\n')
    found = problems(folder, text)
    assert len(found) == 2
    assert found[0].startswith('r.toml: [inputs].reference_image = "ref.png": the image has an alpha channel')
    assert found[1].startswith('r.toml: [inputs].control_video = "depth.mp4": the video has 3 frames')
