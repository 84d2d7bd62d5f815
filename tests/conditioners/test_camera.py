"""camera-plucker: poses, the Plücker embedding and its packing (derivatives facts §4.4).

Hand computations run everywhere; the parity tests load DiffSynth 2.1.12's
``models/wan_video_camera_controller.py`` by its file path (and its pipeline unit for the packing)
where DiffSynth is installed, and are skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch

from tests.conditioners._standins import family, job
from wanflow.conditioners import conditioner
from wanflow.steps.camera_poses import (
    ORIGIN,
    PoseFileError,
    preset_poses,
    read_pose_file,
)
from wanflow.steps.cond_camera import CameraPlucker, packed, plucker
from wanflow.steps.cond_kinds import model_call, nodes

DIRECTIONS = ("Left", "Right", "Up", "Down", "LeftUp", "LeftDown", "RightUp", "RightDown")


def diffsynth_camera():
    """DiffSynth's camera controller module, loaded by file path (it needs torch, numpy, einops)."""
    spec = importlib.util.find_spec("diffsynth")
    if spec is None:
        pytest.skip("DiffSynth is not installed (pip install --no-deps diffsynth==2.1.12)")
    path = spec.submodule_search_locations[0] + "/models/wan_video_camera_controller.py"
    module_spec = importlib.util.spec_from_file_location("diffsynth_camera_controller", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------- poses


def test_the_authors_presets_move_the_camera_centre_by_speed_per_frame():
    rows = preset_poses("LeftUp", 1 / 54, 81)
    assert rows[0] == list(ORIGIN) and len(rows) == 81
    assert rows[17][10] == pytest.approx(17 / 54, abs=1e-12)  # t_x, as Pan_Left.txt row 17
    assert rows[17][14] == pytest.approx(17 / 54, abs=1e-12)  # t_y, as Pan_Up.txt
    assert [r[9] for r in rows] == [0.0] * 81  # the rotation is untouched
    zoom = preset_poses("ZoomIn", 0.01, 5)
    assert zoom[4][18] == pytest.approx(-0.08) and zoom[4][10] == 0.0


def test_diffsynth_tilts_the_rays_instead():
    rows = preset_poses("RightDown", 0.01, 5, "tilt")
    assert rows[4][9] == pytest.approx(-0.04) and rows[4][13] == pytest.approx(-0.04)
    assert rows[4][10] == rows[4][14] == 0.0
    moment = plucker(rows, 16, 8)[..., :3]
    assert torch.equal(moment, torch.zeros_like(moment))  # the centre stays at 0
    moved = plucker(preset_poses("RightDown", 0.01, 5), 16, 8)[..., :3]
    assert moved[1:].abs().amax() > 1e-3


# ------------------------------------------------------------------------------------- Plücker


def _ray(i: float, j: float, k: tuple[float, float, float, float]) -> torch.Tensor:
    fx, fy, cx, cy = k
    d = torch.tensor([(i - cx) / fx, (j - cy) / fy, 1.0], dtype=torch.float64)
    return d / d.norm()


def test_plucker_by_hand_for_a_translated_camera():
    """Square frames (narrower than the 16:9 pose source): fx is rescaled, fx_px = H·(16/9)·fx; a
    camera moved by t (w2c = [I | t]) sits at o = −t relative to the first: moment (−t) × d."""
    width = height = 8
    t = (0.3, -0.2, 0.1)
    row = list(ORIGIN)
    row[10], row[14], row[18] = t
    emb = plucker([list(ORIGIN), row], width, height)  # (2, H, W, 6)
    k = (height * 16 / 9 * ORIGIN[1], ORIGIN[2] * height, 0.5 * width, 0.5 * height)
    for (y, x) in ((0, 0), (3, 6), (7, 2)):
        d = _ray(x + 0.5, y + 0.5, k)
        torch.testing.assert_close(emb[0, y, x].double(), torch.cat([torch.zeros(3, dtype=torch.float64), d]),
                                   rtol=0, atol=1e-6)
        o = -torch.tensor(t, dtype=torch.float64)
        torch.testing.assert_close(emb[1, y, x].double(), torch.cat([torch.linalg.cross(o, d), d]),
                                   rtol=0, atol=1e-6)


def test_plucker_rescales_fy_for_frames_wider_than_the_pose_source():
    width, height = 64, 16  # 4:1, wider than 16:9: fy_px = W·(9/16)·fy
    emb = plucker([list(ORIGIN)], width, height)
    k = (ORIGIN[1] * width, width * 9 / 16 * ORIGIN[2], 0.5 * width, 0.5 * height)
    torch.testing.assert_close(emb[0, 5, 60, 3:].double(), _ray(60.5, 5.5, k), rtol=0, atol=1e-6)


def test_packing_by_hand():
    """Frame 0 fills all four slots of latent frame 0; then groups of four; channel = c·4 + k."""
    frames, channels = 9, 6
    emb = torch.arange(frames, dtype=torch.float32).view(frames, 1, 1, 1) * 10 + torch.arange(channels)
    emb = emb.expand(frames, 2, 3, channels)  # value = frame·10 + channel
    out = packed(emb)
    assert out.shape == (1, 24, 3, 2, 3)
    for c in range(channels):
        for k in range(4):
            assert out[0, c * 4 + k, 0, 0, 0] == c  # frame 0
            for t in (1, 2):
                assert out[0, c * 4 + k, t, 1, 2] == (4 * (t - 1) + 1 + k) * 10 + c


@pytest.mark.parametrize("direction", [*DIRECTIONS, "In", "Out"])
@pytest.mark.parametrize("size", [(48, 16), (16, 24)])  # both sides of the 16:9 pose source
def test_plucker_matches_diffsynth(direction, size):
    ds = diffsynth_camera()
    width, height = size
    coordinates = ds.generate_camera_coordinates(direction, 9, 0.02)
    expected = ds.process_pose_file(coordinates, width, height)  # (F, H, W, 6)
    ours = plucker(preset_poses("Zoom" + direction if direction in ("In", "Out") else direction, 0.02, 9,
                                "tilt"), width, height)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_plucker_of_moved_cameras_matches_diffsynths_ray_math():
    """The authors' presets (translation) through DiffSynth's CameraCtrl code: the same rays."""
    ds = diffsynth_camera()
    rows = preset_poses("LeftDown", 0.05, 9)
    rows[4][7:10] = [math.cos(0.3), 0.0, math.sin(0.3)]  # and one rotated camera
    rows[4][15:18] = [-math.sin(0.3), 0.0, math.cos(0.3)]
    for row in rows:  # the first camera away from the origin: every pose is taken relative to it
        row[18] += 0.5
    torch.testing.assert_close(plucker(rows, 24, 16), ds.process_pose_file(rows, 24, 16), rtol=0, atol=1e-6)


def test_packing_matches_diffsynths_camera_unit(monkeypatch):
    from PIL import Image

    from tests.models._derivative_fixtures import import_diffsynth

    import_diffsynth()
    from diffsynth.pipelines.wan_video import WanVideoUnit_FunCameraControl

    ds = diffsynth_camera()
    frames, width, height = 9, 24, 16
    adapter = SimpleNamespace(process_camera_coordinates=lambda *a: ds.SimpleAdapter.process_camera_coordinates(
        None, *a))
    pipe = SimpleNamespace(dit=SimpleNamespace(control_adapter=adapter, in_dim=32), device="cpu",
                           torch_dtype=torch.float32, load_models_to_device=lambda names: None,
                           preprocess_video=lambda images: torch.zeros(1, 3, 1, height, width),
                           vae=SimpleNamespace(encode=lambda x, device: torch.zeros(1, 16, 1, 2, 3)))
    latents = torch.zeros(1, 16, 3, 2, 3)
    out = WanVideoUnit_FunCameraControl().process(
        pipe, height, width, frames, "LeftUp", 0.02, None, latents, Image.new("RGB", (width, height)),
        False, None, None)
    expected = out["control_camera_latents_input"]
    step = CameraPlucker("tilt").run(SimpleNamespace(params={
        "video.frames": frames, "video.width": width, "video.height": height,
        "inputs.camera.direction": "LeftUp", "inputs.camera.speed": 0.02}))
    assert step["camera"].shape == expected.shape == (1, 24, 3, height, width)
    torch.testing.assert_close(step["camera"], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ pose files


def _pose_file(path, rows, header: str = "") -> None:
    path.write_text(header + "\n" + "".join(" ".join(repr(v) for v in row) + "\n" for row in rows))


def test_a_pose_file_gives_the_rays_of_its_poses(tmp_path):
    rows = preset_poses("Right", 1 / 54, 11)
    _pose_file(tmp_path / "Pan_Right.txt", rows, header="https://example.com/clip")
    assert read_pose_file(tmp_path / "Pan_Right.txt", 9) == rows[:9]  # the first [video].frames
    ctx = SimpleNamespace(params={"video.frames": 9, "video.width": 16, "video.height": 16},
                          file=lambda role: tmp_path / "Pan_Right.txt")
    from_file = CameraPlucker(from_file=True).run(ctx)["camera"]
    preset = CameraPlucker().run(SimpleNamespace(params={**ctx.params, "inputs.camera.direction": "Right",
                                                         "inputs.camera.speed": 1 / 54}))["camera"]
    torch.testing.assert_close(from_file, preset, rtol=0, atol=0)


@pytest.mark.parametrize("text, why", [
    ("\n0 1 2\n", "line 2 holds 3 numbers, not 19"),
    (" ".join(map(str, ORIGIN)) + "\n", "its first line is a pose"),
    ("\n" + " ".join(map(str, ORIGIN)) + "\n", "holds 1 pose, fewer than the 5 of [video].frames"),
    ("\nzero one\n", "line 2 is not a row of numbers"),
    ("\n" + " ".join(map(str, ORIGIN[:7] + (0.0,) * 12)) + "\n", "line 2: the rotation"),
    ("\n" + " ".join(map(str, (0, -1) + ORIGIN[2:])) + "\n", "line 2: the focal lengths"),
])
def test_a_malformed_pose_file_says_what_is_wrong(tmp_path, text, why):
    (tmp_path / "poses.txt").write_text(text)
    with pytest.raises(PoseFileError, match=why.replace("[", r"\[").replace("]", r"\]")):
        read_pose_file(tmp_path / "poses.txt", 5)


# ------------------------------------------------------------------------------ planning, keys


def test_the_step_reads_direction_and_speed_or_only_the_pose_file(tmp_path):
    declared = (conditioner("camera-plucker"),)
    values = {"inputs.camera.direction": "Left", "inputs.camera.speed": 0.02, "inputs.camera.pose_file": None}
    (role, spec), = nodes(job(family(*declared), {}, **values), declared)
    assert role == "camera" and "inputs.camera.direction" in spec.params_read and not spec.files
    _pose_file(tmp_path / "p.txt", preset_poses("Left", 0.02, 9))
    values["inputs.camera.pose_file"] = str(tmp_path / "p.txt")
    (_, spec), = nodes(job(family(*declared), {}, **values), declared)
    assert "inputs.camera.direction" not in spec.params_read and spec.files == {"pose_file": tmp_path / "p.txt"}
    tilt = (conditioner("camera-plucker", directions="tilt"),)
    (_, other), = nodes(job(family(*tilt), {}, **values), tilt)
    assert other.step != spec.step  # the convention is part of the key


def test_the_hand_off_gives_the_dit_its_camera():
    camera = torch.randn(1, 24, 3, 16, 16)
    call = model_call(["camera"], {"camera": {"camera": camera}})
    assert call.extras.camera is camera and call.channels == ()
