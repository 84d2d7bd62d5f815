"""A training sample as a one-clip generation: its columns become [inputs], its bucket [video], and
which frames of the clip fill empty columns follows from what the family's conditioners are for."""

from __future__ import annotations

import types

import pytest

from wanflow.plugins import build_registry
from wanflow.steps.cond_control import EncodeControlVideo
from wanflow.steps.train_conditioning import (
    SampleConditioning,
    frame_inputs,
    sample_values,
)
from wanflow.train.buckets import Target
from wanflow.train.dataset import InputRef, Sample


@pytest.fixture(scope="module")
def registry():
    return build_registry(entry_points=False)


@pytest.mark.parametrize(("family", "expected"), [
    ("wan2.1-t2v-1.3b", None), ("wan2.1-i2v-14b-480p", None),  # the base families keep their rule
    ("wan2.1-fun-14b-inp", {"input_image"}), ("wan2.2-fun-a14b-inp", {"input_image"}),
    ("wan2.1-fun-v1.1-1.3b-control-camera", {"input_image"}), ("wan2.2-fun-a14b-control-camera", {"input_image"}),
    ("wan2.1-fun-1.3b-control", set()), ("wan2.1-fun-v1.1-14b-control", set()), ("wan2.2-fun-a14b-control", set()),
    ("wan2.1-vace-1.3b", set()), ("wan2.1-1.3b-speedcontrol", set()),
])
def test_the_clip_s_first_frame_is_the_start_image_where_the_family_needs_one(registry, family, expected):
    found = frame_inputs(registry.family(family))
    assert found == (None if expected is None else frozenset(expected))


def _sample(inputs=(), values=()) -> Sample:
    return Sample(3, 4, "video", "/data/clip.mp4", "a clip", tuple(inputs), tuple(values),
                  Target(frames=9, height=32, width=48), "48x32x9")


def _job(values: dict):
    return types.SimpleNamespace(values=values)


def test_columns_become_the_inputs_and_the_recipe_s_inputs_are_left_out():
    recipe = {"video.width": 832, "video.height": 480, "video.frames": 81, "inputs.control_video": "/other.mp4",
              "inputs.image": "/validation.png", "inputs.vace.scale": 0.5, "sampler.steps": 50}
    sample = _sample([("control_video", InputRef("/data/control.mp4")), ("input_image", InputRef("/data/clip.mp4", 0)),
                      ("vace_reference_image", InputRef("/data/ref.png"))],
                     [("camera_control_direction", "LeftUp"), ("motion_bucket_id", "40")])
    values, frames = sample_values(_job(recipe), sample)
    assert {k: v for k, v in values.items() if k.startswith(("inputs.", "video."))} == {
        "video.width": 48, "video.height": 32, "video.frames": 9, "inputs.vace.scale": 0.5,
        "inputs.control_video": "/data/control.mp4", "inputs.image": "/data/clip.mp4",
        "inputs.vace.reference": "/data/ref.png", "inputs.camera.direction": "LeftUp",
        "inputs.camera.speed": pytest.approx(1 / 54), "inputs.motion_bucket": 40}
    assert values["sampler.steps"] == 50 and frames == {"image": 0}


def test_a_pose_file_row_is_a_camera_without_a_direction_of_its_own():
    values, _ = sample_values(_job({}), _sample([("camera_pose_file", InputRef("/data/poses.txt"))]))
    assert values["inputs.camera.pose_file"] == "/data/poses.txt"
    assert values["inputs.camera.direction"] == "Left"  # what [inputs.camera] means without one (unused)


def test_the_sample_s_values_and_frames_are_keyed_but_placement_is_not():
    def key(params, frames=(), residency=None):
        inner = EncodeControlVideo("wan2.1", residency=residency)
        return SampleConditioning(inner, params, frames, ("vae.tiled",)).key_config()

    base = key((("video.frames", 9),))
    assert base["step"]["kind"] == "encode-control-video" and base["step"]["vae_version"] == "wan2.1"
    assert key((("video.frames", 13),)) != base
    assert key((("video.frames", 9),), (("image", 0),)) != base
    assert key((("video.frames", 9),), residency=object()) == base


def test_a_camera_speed_alone_moves_the_camera_as_an_inputs_camera_table_would():
    values, _ = sample_values(_job({}), _sample(values=[("camera_control_speed", "0.02")]))
    assert (values["inputs.camera.direction"], values["inputs.camera.speed"]) == ("Left", 0.02)
    plain, _ = sample_values(_job({}), _sample())
    assert not any(k.startswith("inputs.camera") for k in plain)
