"""Reading conditioning inputs: cover-resize and centre-crop, first N video frames, every bad input."""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from structlog.testing import capture_logs

from wanflow.errors import ModelInputError
from wanflow.output import load_image, load_video, save_mp4, to_model_image, to_model_video, to_uint8_frames

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def coordinate_image(path, width, height):
    """Red = column, green = row: the crop offset can be read off the pixels."""
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_wide_image_keeps_its_centre_columns(tmp_path):
    with capture_logs() as logs:
        out = load_image(coordinate_image(tmp_path / "wide.png", 61, 20), 20, 20)
    assert out.dtype == np.uint8 and out.shape == (20, 20, 3)
    assert np.array_equal(out[0, :, 0], np.arange(20, 40))  # (61 - 20) // 2 = 20
    assert np.array_equal(out[:, 0, 1], np.arange(20))
    assert [e["event"] for e in logs] == ["input resized and centre-cropped to the video's aspect ratio"]
    assert (logs[0]["source_size"], logs[0]["target_size"]) == ("61x20", "20x20")


def test_tall_image_keeps_its_centre_rows(tmp_path):
    out = load_image(coordinate_image(tmp_path / "tall.png", 20, 45), 20, 20)
    assert np.array_equal(out[:, 0, 1], np.arange(12, 32))  # (45 - 20) // 2 = 12
    assert np.array_equal(out[0, :, 0], np.arange(20))


def test_scaled_cover_crop_keeps_the_middle_stripe(tmp_path):
    # 80x20: red | green | blue at 30 | 20 | 30 columns; cover 10x10 scales by 0.5 to 40x10, crops x 15..25,
    # which is exactly the green stripe; Lanczos lets only the edge columns see red (left) and blue (right).
    img = np.zeros((20, 80, 3), np.uint8)
    img[:, :30], img[:, 30:50], img[:, 50:] = RED, GREEN, BLUE
    Image.fromarray(img).save(tmp_path / "stripes.png")
    out = load_image(tmp_path / "stripes.png", 10, 10).astype(int)
    assert np.abs(out[:, 3:7] - GREEN).max() <= 1
    assert out[:, 0, 0].min() > 0 and out[:, 0, 2].max() == 0  # red bleeds in on the left only
    assert out[:, 9, 2].min() > 0 and out[:, 9, 0].max() == 0  # blue on the right only


def test_same_aspect_ratio_is_resized_without_a_crop_message(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    img[:20, :20], img[20:, 20:] = RED, BLUE
    Image.fromarray(img).save(tmp_path / "q.png")
    with capture_logs() as logs:
        out = load_image(tmp_path / "q.png", 10, 10).astype(int)
    assert logs == []
    assert np.abs(out[1, 1] - RED).max() <= 2 and np.abs(out[8, 8] - BLUE).max() <= 2 and out[1, 8].max() <= 2


def test_grey_and_alpha_images_become_rgb(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "g.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "g.png", 8, 8), np.full((8, 8, 3), 77, np.uint8))
    assert np.array_equal(load_image(tmp_path / "a.png", 8, 8)[0, 0], [10, 20, 30])


def _bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), RED).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "notes.png").write_text("this is a note")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()


@pytest.mark.parametrize("name, match", [
    ("missing.png", "no such image file"),
    ("folder.png", "is a folder, not an image file"),
    ("notes.png", "not a readable image .*looks like text, 14 bytes"),
    ("truncated.png", "not a readable image .*looks like a PNG image, 60 bytes"),
    ("empty.jpg", "looks like an empty file"),
])
def test_bad_images_are_clear_errors(tmp_path, name, match):
    _bad_files(tmp_path)
    with pytest.raises(ModelInputError, match=match):
        load_image(tmp_path / name, 16, 16)


@pytest.fixture(scope="module")
def counting_video(tmp_path_factory):
    """12 frames at 8 fps whose grey level is 20 × the frame index, 40x24."""
    path = tmp_path_factory.mktemp("v") / "count.mp4"
    frames = np.stack([np.full((24, 40, 3), 20 * i, np.uint8) for i in range(12)])
    save_mp4(frames, path, 8, {}, quality=0)
    return path


def test_video_gives_its_first_frames_resized_and_cropped(counting_video):
    out = load_video(counting_video, 5, 16, 16)
    assert out.shape == (5, 16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.reshape(5, -1).mean(1) - 20 * np.arange(5)).max() < 2


def test_video_can_be_resampled_to_a_frame_rate(counting_video):
    out = load_video(counting_video, 4, 40, 24, fps=4)
    assert np.abs(out.reshape(4, -1).mean(1) - 40 * np.arange(4)).max() < 12  # every other frame


def test_a_short_video_names_its_frame_count(counting_video):
    with pytest.raises(ModelInputError, match="has 12 frames, fewer than the 13 asked for"):
        load_video(counting_video, 13, 16, 16)


def test_bad_videos_are_clear_errors(tmp_path, counting_video):
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000", "-t", "0.1", "-c:a", "aac",
                    str(tmp_path / "audio.mp4")], check=True)
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "cut.mp4").write_bytes(counting_video.read_bytes()[:1000])
    cases = {"audio.mp4": "holds no frames", "text.mp4": "not a readable video .*looks like text",
             "cut.mp4": "not a readable video .*an MP4/M4A/MOV file, 1000 bytes", "none.mp4": "no such video file"}
    for name, match in cases.items():
        with pytest.raises(ModelInputError, match=match):
            load_video(tmp_path / name, 12, 16, 16)
    with pytest.raises(ModelInputError, match="at least 1"):
        load_video(counting_video, 0, 16, 16)


def test_model_tensor_conversions_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    x = to_model_video(frames)
    assert x.shape == (3, 2, 3, 4) and x.dtype == np.float32
    assert x[:, 1, 2, 3].tolist() == pytest.approx((frames[1, 2, 3] / 127.5 - 1).tolist())
    assert np.array_equal(to_uint8_frames(x), frames)
    assert to_uint8_frames(np.full((3, 1, 1, 1), 7.0)).item(0) == 255  # clipped
    assert to_model_image(frames[0]).shape == (3, 1, 3, 4)
