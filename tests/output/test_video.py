"""Writing mp4s: frames, size, fps and metadata survive a round trip; odd sizes; atomic writes."""

from __future__ import annotations

import json
import os

import imageio_ffmpeg
import numpy as np
import pytest

from wanflow.errors import ModelInputError, WanflowError
from wanflow.output import read_mp4_metadata, save_mp4, save_png_frames
from wanflow.output import video
from wanflow.output.video import describe_difference, parse_ffmetadata, read_frames

META = {"recipe_digest": "sha256:ab=cd;ef#\\gh", "seed": 1234, "negative": "色调艳丽，过曝"}


def smooth_frames(t: int, h: int, w: int) -> np.ndarray:
    """Slowly varying colours: what a video codec is made for, so the error bound is meaningful."""
    ti, yi, xi = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    phase = np.array([0.0, 2.0, 4.0])
    x = 0.5 + 0.4 * np.sin(0.09 * xi[..., None] + 0.07 * yi[..., None] + 0.3 * ti[..., None] + phase)
    return (x * 255).astype(np.uint8)  # (T, H, W, 3)


def decode(path):
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen])
    return meta, frames


def test_round_trip_keeps_count_size_fps_metadata_and_pixels(tmp_path):
    frames = smooth_frames(9, 48, 64)
    paths = save_mp4(frames, tmp_path / "out" / "clip.mp4", 8, META, quality=0)
    assert paths == [tmp_path / "out" / "clip.mp4", tmp_path / "out" / "clip.json"]
    meta, back = decode(paths[0])
    assert back.shape == (9, 48, 64, 3) and meta["fps"] == 8
    err = np.abs(back.astype(int) - frames)
    assert err.mean() < 4.0 and err.max() <= 16  # measured 2.7 / 11: yuv420p chroma subsampling, CRF 0
    assert read_mp4_metadata(paths[0]) == META
    assert json.loads(paths[1].read_text(encoding="utf-8")) == META
    assert b"Lavf" not in paths[0].read_bytes()  # no ffmpeg version in the file (bitexact)


def test_lower_quality_setting_means_larger_error(tmp_path):
    frames = smooth_frames(5, 32, 32)
    errs = []
    for crf in (0, 45):
        save_mp4(frames, tmp_path / f"q{crf}.mp4", 8, {}, quality=crf)
        errs.append(np.abs(decode(tmp_path / f"q{crf}.mp4")[1].astype(int) - frames).mean())
    assert errs[0] < errs[1]


def test_odd_sizes_are_padded_with_the_edge_and_recorded(tmp_path):
    frames = smooth_frames(3, 33, 47)
    save_mp4(frames, tmp_path / "odd.mp4", 8, {"seed": 1}, quality=0)
    _, back = decode(tmp_path / "odd.mp4")
    assert back.shape == (3, 34, 48, 3)
    assert np.abs(back[:, :33, :47].astype(int) - frames).mean() < 4.0
    assert np.abs(back[:, 33, :47].astype(int) - frames[:, 32]).mean() < 4.0  # the repeated last row
    assert read_mp4_metadata(tmp_path / "odd.mp4") == {"seed": 1, "frame_size": [47, 33]}


def test_a_failing_write_leaves_nothing_at_the_final_path(tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    save_mp4(smooth_frames(2, 16, 16), target, 8, {"run": 1})
    before = target.read_bytes()

    def crash(frames, path, *args):
        path.write_bytes(b"half a video")
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "_encode", crash)
    with pytest.raises(KeyboardInterrupt):
        save_mp4(smooth_frames(2, 16, 16), target, 8, {"run": 2})
    with pytest.raises(KeyboardInterrupt):
        save_mp4(smooth_frames(2, 16, 16), tmp_path / "new.mp4", 8, {})
    assert target.read_bytes() == before and read_mp4_metadata(target) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4"]


@pytest.mark.parametrize("frames, match", [
    (np.zeros((2, 8, 8, 3), np.float32), "expected uint8"),
    (np.zeros((8, 8, 3), np.uint8), r"\(8, 8, 3\)"),
    (np.zeros((0, 8, 8, 3), np.uint8), "T, H, W ≥ 1"),
])
def test_bad_frames_are_refused_before_encoding(tmp_path, frames, match):
    with pytest.raises(ModelInputError, match=match):
        save_mp4(frames, tmp_path / "x.mp4", 8, {})
    with pytest.raises(ModelInputError, match="quality"):
        save_mp4(np.zeros((1, 8, 8, 3), np.uint8), tmp_path / "x.mp4", 8, {}, quality=60)
    assert not (tmp_path / "x.mp4").exists()


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@pytest.mark.skipif(len(_cpus()) < 2, reason="needs two CPU cores to vary the count ffmpeg sees")
def test_the_bytes_do_not_depend_on_the_cores_ffmpeg_sees(tmp_path):
    """x264 sizes its thread pool from the CPU affinity it inherits; the file must not change with it.

    At 128×128 and above, an encoder left on "auto" threads writes other bytes on one core than on
    two (other frame-thread decisions, and ``threads=N`` in the options string it embeds)."""
    frames = smooth_frames(9, 128, 128) ^ np.random.default_rng(0).integers(0, 40, (9, 128, 128, 3), np.uint8)
    everything = _cpus()
    written = {}
    try:
        for cpus in ({everything[0]}, set(everything)):
            os.sched_setaffinity(0, cpus)  # the ffmpeg child inherits this thread's affinity
            path = tmp_path / f"cores{len(cpus)}.mp4"
            save_mp4(frames, path, 16, {"seed": 3})
            written[len(cpus)] = path.read_bytes()
    finally:
        os.sched_setaffinity(0, everything)
    one, many = written.values()
    assert one == many
    assert b"threads=4 " in one  # the fixed count, whatever the machine


def test_read_frames_gives_what_the_decoder_sees(tmp_path):
    frames = smooth_frames(5, 32, 48)
    save_mp4(frames, tmp_path / "a.mp4", 8, {}, quality=0)
    back = read_frames(tmp_path / "a.mp4")
    assert back.dtype == np.uint8 and back.shape == (5, 32, 48, 3)
    assert np.array_equal(back, decode(tmp_path / "a.mp4")[1])
    assert np.abs(back.astype(int) - frames).mean() < 4.0
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(WanflowError, match="cannot decode"):
        read_frames(tmp_path / "bad.mp4")


def test_describe_difference_tells_the_encoder_from_the_frames(tmp_path):
    frames = smooth_frames(5, 32, 32)
    save_mp4(frames, tmp_path / "a.mp4", 8, {"seed": 1}, quality=0)
    save_mp4(frames, tmp_path / "b.mp4", 8, {"seed": 2}, quality=0)  # same pictures, other bytes
    assert (tmp_path / "a.mp4").read_bytes() != (tmp_path / "b.mp4").read_bytes()
    same = describe_difference(tmp_path / "a.mp4", tmp_path / "b.mp4")
    assert same == "bytes differ but decoded frames are identical (encoder difference)"
    changed = frames.copy()
    changed[3] = 255 - changed[3]
    save_mp4(changed, tmp_path / "c.mp4", 8, {"seed": 1}, quality=0)
    worst = np.abs(read_frames(tmp_path / "a.mp4").astype(int) - read_frames(tmp_path / "c.mp4")).max()
    assert describe_difference(tmp_path / "a.mp4", tmp_path / "c.mp4") == (
        f"frames differ (max abs diff {worst}, first differing frame 3 of 5)")
    save_mp4(frames[:4], tmp_path / "d.mp4", 8, {"seed": 1}, quality=0)
    assert describe_difference(tmp_path / "a.mp4", tmp_path / "d.mp4") == (
        "frames differ (5 frames of 32×32 → 4 of 32×32)")
    assert describe_difference(tmp_path / "a.json", tmp_path / "b.json") == ""


def test_png_frames_are_lossless_and_numbered(tmp_path):
    from PIL import Image
    frames = smooth_frames(3, 10, 12)
    paths = save_png_frames(frames, tmp_path / "png")
    assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert all(np.array_equal(np.asarray(Image.open(p)), f) for p, f in zip(paths, frames))


def test_ffmetadata_escapes_are_undone():
    text = ";FFMETADATA1\ncomment={\"a\": \"x\\=y\\;z\\#w\\\\\\\\q\"}\ntitle=two\\\nlines\n[STREAM]\ncomment=no\n"
    assert parse_ffmetadata(text) == {"comment": '{"a": "x=y;z#w\\\\q"}', "title": "two\nlines"}


def test_a_video_without_wanflow_metadata_says_so(tmp_path):
    writer = imageio_ffmpeg.write_frames(str(tmp_path / "plain.mp4"), (16, 16), macro_block_size=1)
    writer.send(None)
    writer.send(np.zeros((16, 16, 3), np.uint8))
    writer.close()
    with pytest.raises(WanflowError, match="no comment metadata"):
        read_mp4_metadata(tmp_path / "plain.mp4")
    with pytest.raises(WanflowError, match="no such video file"):
        read_mp4_metadata(tmp_path / "missing.mp4")
