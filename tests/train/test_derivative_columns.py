"""The derivative families' dataset columns (DiffSynth's names): checked at validation, each bad row
named with its file, row and column, as the recipe's own [inputs] are checked for a generation."""

from __future__ import annotations

import csv
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.train.test_dataset import _video
from wanflow.train import DatasetError, Sizing, load_dataset
from wanflow.train.dataset import CAMERA_DIRECTIONS, MOTION_BUCKETS

CAMERA = ({"camera", "image", "video"}, {"camera", "image"})
CONTROL = ({"control_video", "image", "reference_image", "video"}, {"control_video"})
VACE = ({"vace"}, set())
SPEED = ({"motion_bucket", "video"}, {"motion_bucket"})


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """A 9-frame 32×32 clip, a 5-frame control video, a 9-frame 48×32 mask and a pose file."""
    monkeypatch.chdir(tmp_path)
    _video(tmp_path / "clip.mp4", 9, 32, 32)
    _video(tmp_path / "short.mp4", 5, 32, 32)
    _video(tmp_path / "wide.mp4", 9, 48, 32)
    Image.new("RGB", (32, 32), (255, 255, 255)).save(tmp_path / "mask.png")
    rows = ["https://example.com/clip"] + ["0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"] * 3
    (tmp_path / "poses.txt").write_text("\n".join(rows) + "\n")
    return tmp_path


def problems(folder: Path, columns: dict[str, str], inputs: tuple[set, set]) -> list[str]:
    row = {"video": "clip.mp4", "prompt": "a clip", **columns}
    with (folder / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(row))
        writer.writeheader()
        writer.writerow(row)
    with pytest.raises(DatasetError) as caught:
        load_dataset(folder / "metadata.csv", sizing=Sizing(16, max_frames=9), accepted_inputs=inputs[0],
                     required_inputs=inputs[1], family="the family")
    return caught.value.problems


def loads(folder: Path, columns: dict[str, str], inputs: tuple[set, set]) -> object:
    row = {"video": "clip.mp4", "prompt": "a clip", **columns}
    with (folder / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(row))
        writer.writeheader()
        writer.writerow(row)
    return load_dataset(folder / "metadata.csv", sizing=Sizing(16, max_frames=9), accepted_inputs=inputs[0],
                        required_inputs=inputs[1], family="the family")


ROW = "metadata.csv row 1 (line 2)"


def test_a_camera_direction_outside_the_list_is_named_with_the_closest_one(folder):
    found = problems(folder, {"camera_control_direction": "LeftUP"}, CAMERA)
    assert found == [(f"{ROW}: camera_control_direction = 'LeftUP': is not a camera direction; did you mean "
                     f"'LeftUp'? use one of {', '.join(CAMERA_DIRECTIONS)}")]


@pytest.mark.parametrize("speed", ["0", "-0.1", "fast", "inf"])
def test_a_camera_speed_that_is_not_positive_and_finite_is_refused(folder, speed):
    found = problems(folder, {"camera_control_direction": "Left", "camera_control_speed": speed}, CAMERA)
    assert len(found) == 1 and found[0].startswith(f"{ROW}: camera_control_speed = '{speed}': "), found


@pytest.mark.parametrize("bucket", ["101", "-1", "2.5", "fast"])
def test_a_motion_bucket_outside_the_trained_range_is_refused(folder, bucket):
    found = problems(folder, {"motion_bucket_id": bucket}, SPEED)
    assert found == [(f"{ROW}: motion_bucket_id = '{bucket}': must be a whole number from 0 (slow) to 100 (fast), "
                     "the range the motion controller was trained on")]


def test_in_range_values_load_as_written(folder):
    dataset = loads(folder, {"motion_bucket_id": "100"}, SPEED)
    assert dataset.samples[0].values == (("motion_bucket_id", "100"),)
    dataset = loads(folder, {"camera_control_direction": "RightDown", "camera_control_speed": "0.01"}, CAMERA)
    assert dict(dataset.samples[0].values) == {"camera_control_direction": "RightDown", "camera_control_speed": "0.01"}


def test_the_checks_use_the_recipe_s_own_choices():
    from wanflow.recipe.schema import Camera, Inputs

    hints = typing.get_type_hints(Camera)
    assert CAMERA_DIRECTIONS == typing.get_args(hints["direction"])
    import attrs

    bucket = attrs.fields(Inputs).motion_bucket
    assert MOTION_BUCKETS == (0, 100) and "0–100" in bucket.metadata.get("why", "0–100")


def test_a_control_video_shorter_than_the_sample_is_refused(folder):
    found = problems(folder, {"control_video": "short.mp4"}, CONTROL)
    assert found == [(f"{ROW}: control_video = 'short.mp4': has 5 frames, fewer than the 9 the clip trains on; "
                     "use a control video at least as long as the clip")]


def test_a_missing_required_column_is_named(folder):
    assert problems(folder, {}, CONTROL) == [(f"{ROW}: the family requires the 'control_video' input; set the "
                                             "control_video column")]
    assert problems(folder, {}, SPEED) == [(f"{ROW}: the family requires the 'motion_bucket' input; set the "
                                           "motion_bucket_id column")]


def test_a_vace_mask_of_another_size_or_without_its_video_is_refused(folder):
    found = problems(folder, {"vace_video": "clip.mp4", "vace_video_mask": "wide.mp4"}, VACE)
    assert found == [(f"{ROW}: vace_video_mask = 'wide.mp4': is 48x32, but vace_video is 32x32; the mask must mark "
                     "the video's own pixels: use a mask of the video's size")]
    found = problems(folder, {"vace_video_mask": "mask.png"}, VACE)
    assert len(found) == 1 and "the row has no vace_video" in found[0], found
    dataset = loads(folder, {"vace_video": "clip.mp4", "vace_video_mask": "mask.png"}, VACE)  # an image mask
    assert [c for c, _ in dataset.samples[0].inputs] == ["vace_video", "vace_video_mask"]


def test_a_pose_file_beside_a_direction_or_missing_is_refused(folder):
    found = problems(folder, {"camera_pose_file": "poses.txt", "camera_control_direction": "Left"}, CAMERA)
    assert found == [(f"{ROW}: camera_control_direction = 'Left': is set beside camera_pose_file, which gives "
                     "every pose itself; remove one of the two")]
    found = problems(folder, {"camera_pose_file": "nowhere.txt"}, CAMERA)
    assert len(found) == 1 and "nowhere.txt does not exist" in found[0], found


def test_a_pose_file_with_fewer_poses_than_frames_is_refused_at_validation(folder):
    from wanflow.steps.train_checks import pose_file_problems

    dataset = loads(folder, {"camera_pose_file": "poses.txt"}, CAMERA)
    found = pose_file_problems(dataset, "r.toml: [train].dataset")
    assert len(found) == 1 and found[0].startswith("r.toml: [train].dataset: metadata.csv row 1: camera_pose_file"), found
    assert "holds 3 poses, fewer than the 9" in found[0]
    (folder / "poses.txt").write_text("header\n" + "\n".join(["0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"] * 9) + "\n")
    assert pose_file_problems(dataset, "r.toml: [train].dataset") == []


def test_frame_inputs_choose_which_clip_frames_fill_empty_columns(folder):
    row = {"video": "clip.mp4", "prompt": "a clip"}
    with (folder / "metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(row))
        writer.writeheader()
        writer.writerow(row)
    sizing = Sizing(16, max_frames=9)
    take = ({"image", "control_video", "video"}, set())
    base = load_dataset(folder / "metadata.csv", sizing=sizing, accepted_inputs=take[0])
    assert [c for c, _ in base.samples[0].inputs] == ["input_image"]  # the base rule: any family taking an image
    none = load_dataset(folder / "metadata.csv", sizing=sizing, accepted_inputs=take[0], frame_inputs=())
    assert none.samples[0].inputs == ()
    np.testing.assert_equal(none.samples[0].target.frames, 9)
