"""Every Wan-Fun family and speed control end to end on tiny weights in their repositories' layouts.

Each run gives an mp4 of the requested size and frames; changing one conditioning input (the
control video, the camera direction, the motion bucket) re-runs only its step and what follows.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e._layout_fun import REPOS, write_fun_models_root
from tests.e2e._run import computed, run, video_shape
from tests.e2e.conftest import use_models, write_recipe

AFTER = {"denoise", "decode", "save", "save-metadata"}
SPEED = "wan2.1-1.3b-speedcontrol"


def _inputs(family: str, media: dict) -> tuple[dict, dict]:
    """(file inputs, other [inputs] values) that a run of ``family`` uses."""
    files: dict = {}
    if "inp" in family or "camera" in family:
        files["image"] = media["first"]
    if family.endswith("-inp"):
        files["end_image"] = media["last"]
    if family.endswith("-control"):
        files["control_video"] = media["control"]
    if family.endswith("-control") and ("v1.1" in family or "a14b" in family):
        files["reference_image"] = media["last"]
    extra = {"camera": {"direction": "LeftUp"}} if "camera" in family else {}
    return files, extra | ({"motion_bucket": 40} if family == SPEED else {})


def _write_video(path, frames: int, seed: int) -> None:
    from wanflow.output import save_mp4

    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 24, 40, 3), dtype=np.uint8)
    save_mp4(pixels, path, 8, {}, quality=0)


@pytest.fixture(scope="session")
def fun_root(tmp_path_factory):
    return write_fun_models_root(tmp_path_factory.mktemp("fun-models"))


@pytest.fixture(scope="session")
def media(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("fun-inputs")
    out = dict(images)
    for name, seed in (("control", 7), ("control2", 8)):
        out[name] = folder / f"{name}.mp4"
        _write_video(out[name], 6, seed)
    return out


@pytest.fixture()
def fun_env(fun_root, tmp_path, monkeypatch):
    return use_models(fun_root, tmp_path, monkeypatch)


def _recipe(tmp_path, family: str, files: dict, extra: dict):
    path = write_recipe(tmp_path, family, files, video={"width": 16, "height": 16})
    if extra:
        import tomlkit

        doc = tomlkit.parse(path.read_text())
        doc.setdefault("inputs", tomlkit.table()).update(extra)
        path.write_text(tomlkit.dumps(doc))
    return path


def test_every_fun_family_and_speed_control_is_covered():
    from wanflow.families import fun

    assert sorted([*REPOS, SPEED]) == sorted(f.name for f in fun.families())
    assert len(REPOS) == 13


@pytest.mark.parametrize("family", sorted([*REPOS, SPEED]))
def test_fun_family_end_to_end(family, fun_env, media, tmp_path):
    files, extra = _inputs(family, media)
    recipe = _recipe(tmp_path, family, files, extra)
    first = run(recipe, fun_env)
    assert computed(first) == set(first.results)
    assert video_shape(first.archive / "outputs" / "video.mp4") == (5, 16, 16)
    assert computed(run(recipe, fun_env)) == set()
    assert computed(run(recipe, fun_env, "sampler.seed=1")) == AFTER


@pytest.mark.parametrize("family", ["wan2.1-fun-v1.1-1.3b-control", "wan2.2-fun-a14b-control"])
def test_a_new_control_video_reencodes_only_it(family, fun_env, media, tmp_path):
    files, extra = _inputs(family, media)
    first = run(_recipe(tmp_path, family, files, extra), fun_env)
    files["control_video"] = media["control2"]
    again = run(_recipe(tmp_path, family, files, extra), fun_env)
    assert computed(again) == {"encode-conditioning:control", *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]


@pytest.mark.parametrize("family, clip", [("wan2.1-fun-v1.1-14b-control", True), ("wan2.2-fun-a14b-control", False)])
def test_a_new_reference_image_reencodes_only_it(family, clip, fun_env, media, tmp_path):
    """The reference reaches ref_conv (and, for Wan2.1, CLIP, ahead of the start image)."""
    files, extra = _inputs(family, media)
    files["image"] = media["first"]
    first = run(_recipe(tmp_path, family, files, extra), fun_env)
    files["reference_image"] = media["first"]
    again = run(_recipe(tmp_path, family, files, extra), fun_env)
    assert computed(again) == {"encode-conditioning:reference", *AFTER} | ({"encode-image"} if clip else set())
    assert again.lock["outputs"] != first.lock["outputs"]


@pytest.mark.parametrize("family", ["wan2.1-fun-v1.1-14b-control-camera", "wan2.2-fun-a14b-control-camera"])
def test_a_new_camera_direction_recomputes_only_the_plucker_step(family, fun_env, media, tmp_path):
    files, extra = _inputs(family, media)
    recipe = _recipe(tmp_path, family, files, extra)
    first = run(recipe, fun_env)
    again = run(recipe, fun_env, "inputs.camera.direction=Down")
    assert computed(again) == {"camera-plucker", *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]
    assert computed(run(recipe, fun_env, "inputs.camera.speed=0.05")) == {"camera-plucker", *AFTER}


def test_a_new_motion_bucket_recomputes_only_the_offset(fun_env, media, tmp_path):
    files, extra = _inputs(SPEED, media)
    recipe = _recipe(tmp_path, SPEED, files, extra)
    first = run(recipe, fun_env)
    again = run(recipe, fun_env, "inputs.motion_bucket=90")
    assert computed(again) == {"motion-bucket", *AFTER}
    assert again.lock["outputs"] != first.lock["outputs"]
