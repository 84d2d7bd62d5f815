"""Which frames of the video to continue condition a LongCat-Video clip, as its authors pick them.

The authors' demo (``run_demo_video_continuation.py``) first brings the input video to the
output's frame rate by keeping every ``stride``-th frame, ``stride = max(1, round(fps / 15))``
(15 fps being their output rate), then ``generate_vc`` keeps the last ``num_cond_frames`` of
those. wanflow does the same with ``[video].fps`` as the rate, so the conditioning frames move at
the speed the clip plays at. Torch-free: validation asks it before any model loads.
"""

from __future__ import annotations

import functools
from pathlib import Path


def frame_stride(source_fps: float, target_fps: float) -> int:
    """Keep every ``stride``-th frame: ``max(1, round(source / target))`` (30 -> 15 fps: 2)."""
    return max(1, round(source_fps / target_fps))


def needed_frames(frames: int, stride: int) -> int:
    """Source frames that give ``frames`` frames at ``stride``: the first, then ``stride`` apart."""
    return (frames - 1) * stride + 1


def kept_indices(count: int, stride: int, frames: int) -> list[int]:
    """The source frames that condition the clip: the last ``frames`` of every ``stride``-th frame
    from the first, oldest first."""
    return list(range(0, count, stride))[-frames:]


def source_rate(path: Path) -> float:
    """The video's frame rate as ffmpeg reports it (its first video stream)."""
    st = path.stat()
    return _rate(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _rate(path: Path, size: int, mtime_ns: int) -> float:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        return float(next(reader)["fps"])
    finally:
        reader.close()
