"""Opening a dataset's media: size and usable frame count, or why the file cannot be read.

Reuses the input checks of generation (``wanflow.output.probe``): an image is decoded fully,
a video is decoded (into ffmpeg's null output) up to the frames training reads, a recording is
decoded as speech-to-video's input check decodes it, and answers are
remembered by (path, size, mtime) so a re-check of an unchanged dataset is cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path

import attrs

#: EXIF orientations that turn the picture a quarter turn (width and height swap when applied).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


@attrs.frozen
class Media:
    """A readable media file: absolute path, displayed size, frames decoded (1 for an image)."""

    path: str
    width: int
    height: int
    frames: int


def probe_media(path: Path, kind: str, wanted_frames: int) -> tuple[Media | None, str]:
    """(Media, "") or (None, why it cannot be used and what to use instead)."""
    from wanflow.output.probe import image_problem, video_frames

    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns)
    resolved = str(path.resolve())
    if kind == "audio":  # decoded by the speech encoder's step; checked as a generation's [inputs].audio
        from wanflow.audio.probe import check_audio

        why = "; ".join(check_audio(path))
        return (None, why) if why else (Media(resolved, 0, 0, 0), "")
    if kind == "image":
        why = image_problem(path, *stamp)
        return (None, why) if why else (Media(resolved, *_image_size(path, *stamp), 1), "")
    size, error = _video_size(path, *stamp)
    count, decode_error = video_frames(path, max(1, wanted_frames), *stamp)
    error = error or (decode_error if count < wanted_frames else "")
    if error or not count:
        from wanflow.output.media import describe_file

        return None, (f"not a readable video ({error or 'it holds no frames'}); it looks like "
                      f"{describe_file(path)}; use an mp4, mov, mkv or webm file")
    return Media(resolved, size[0], size[1], count), ""


@functools.lru_cache(maxsize=4096)
def _image_size(path: Path, size: int, mtime_ns: int) -> tuple[int, int]:
    """(width, height) as shown, EXIF rotation applied (as ``wanflow.output.load_image`` does)."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        turned = im.getexif().get(0x0112) in _QUARTER_TURNS
    return (height, width) if turned else (width, height)


@functools.lru_cache(maxsize=4096)
def _video_size(path: Path, size: int, mtime_ns: int) -> tuple[tuple[int, int], str]:
    """((width, height) of the first video stream, "") or ((0, 0), ffmpeg's complaint)."""
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        try:
            meta = next(reader)
        finally:
            reader.close()
    except (OSError, RuntimeError, StopIteration, ValueError) as exc:
        text = str(exc).strip().splitlines()
        return (0, 0), (text[-1][:200] if text else type(exc).__name__)
    return tuple(meta["size"]), ""
