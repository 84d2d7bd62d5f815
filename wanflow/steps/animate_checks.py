"""Wan2.2-Animate's driving videos, opened at validation so that a bad one is refused before any
model loads.

The pose, face, background and mask videos come from one preprocessing run of one driving video:
each frame of one is the same moment in the others. So they must hold the same number of frames
(at least ``[video].frames``; a shorter one would be ping-ponged out of step with the rest), the
pose, background and mask videos the same size (they are resized to the clip alike), the face
video square crops. The mask must be black and white (white = the person to replace): a few
in-between pixels along the edges, as a lossy codec leaves them, are fine; a grey or soft mask
is not, since the model reads it cut at half.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from wanflow.errors import display_path
from wanflow.media_size import pixel_size
from wanflow.output.probe import video_frames
from wanflow.steps.input_checks import Where, format_value

#: The driving videos in the order they are compared (the first one given is the yardstick).
VIDEOS = ("pose_video", "face_video", "background_video", "mask")
#: Videos resized to the clip's size, which must share one size.
SAME_SIZE = ("pose_video", "background_video", "mask")
#: A mask pixel counts as black or white within this distance of 0 or 255.
MASK_TOLERANCE = 48
#: The share of in-between mask pixels (a codec's edges) tolerated.
MASK_GREY_SHARE = 0.05


def animate_problems(values: Any, where: Where) -> list[str]:
    """Every driving video of an Animate job, checked against the others and the clip."""
    given = {n: Path(values[f"inputs.{n}"]) for n in VIDEOS
             if values.get(f"inputs.{n}") is not None and Path(values[f"inputs.{n}"]).is_file()}
    frames = values["video.frames"]
    found: list[str] = []
    counts: dict[str, int] = {}
    for name, path in given.items():
        count, error = video_frames(path, 10**7, *_stamp(path))
        key = f"inputs.{name}"
        if error and not count:
            found.append(f"{where(key)}: {_label(key, path)}: not a readable video ({error}); use an mp4, mov, "
                         "mkv or webm file")
        elif count < frames:
            found.append(f"{where(key)}: {_label(key, path)}: the video has {count} frames, fewer than the "
                         f"{frames} of [video].frames; use the whole driving video or set [video].frames ≤ {count}")
        else:
            counts[name] = count
    if len(set(counts.values())) > 1:
        first = next(iter(counts))
        for name, count in counts.items():
            if count != counts[first]:
                key = f"inputs.{name}"
                found.append(f"{where(key)}: {_label(key, given[name])}: {count} frames, but [inputs].{first} has "
                             f"{counts[first]}; the driving videos must come from one preprocessing run, frame "
                             "for frame")
    found += _size_problems(given, where)
    if "mask" in given and "mask" in counts:
        found += _mask_problems(given["mask"], frames, where)
    return found


def _size_problems(given: dict[str, Path], where: Where) -> list[str]:
    found = []
    sizes = {n: pixel_size(p, *_stamp(p)) for n, p in given.items()}
    same = [(n, sizes[n]) for n in SAME_SIZE if sizes.get(n) is not None]
    for name, size in same[1:]:
        first, first_size = same[0]
        if size != first_size:
            key = f"inputs.{name}"
            found.append(f"{where(key)}: {_label(key, given[name])}: {size[0]}x{size[1]} pixels, but "
                         f"[inputs].{first} is {first_size[0]}x{first_size[1]}; the driving videos must come "
                         "from one preprocessing run, pixel for pixel")
    face = sizes.get("face_video")
    if face is not None and face[0] != face[1]:
        key = "inputs.face_video"
        found.append(f"{where(key)}: {_label(key, given['face_video'])}: {face[0]}x{face[1]} pixels; the face "
                     "video holds square face crops (512x512 from the preprocessing)")
    return found


def _mask_problems(path: Path, frames: int, where: Where) -> list[str]:
    grey, share = grey_share(path, frames, *_stamp(path))
    if share <= MASK_GREY_SHARE:
        return []
    key = "inputs.mask"
    return [f"{where(key)}: {_label(key, path)}: not a black-and-white mask: {share:.0%} of its pixels are "
            f"grey (e.g. {grey}); use the preprocessing's mask video (white on the person to replace, black "
            "elsewhere)"]


@functools.lru_cache(maxsize=16)
def grey_share(path: Path, frames: int, size: int, mtime_ns: int) -> tuple[int, float]:
    """(a grey value found, the share of grey pixels) over the first channel of the first
    ``frames`` frames, as the model reads the mask."""
    from wanflow.output import load_video

    width, height = pixel_size(path, size, mtime_ns)
    first = load_video(path, frames, width, height)[..., 0]  # (T, H, W), at the file's own size
    grey = (first > MASK_TOLERANCE) & (first < 255 - MASK_TOLERANCE)
    return (int(first[grey][0]) if grey.any() else 0), float(grey.mean())


def _label(key: str, path: Path) -> str:
    table, _, name = key.rpartition(".")
    return f"[{table}].{name} = {format_value(display_path(path))}"


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime): a remembered answer is dropped when the file changes."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns
