"""The pixel size of an image or of a video's first frame, torch-free.

Read where a size must be known before anything loads: validation (an input's size against the
clip's or another input's) and recipe resolution (LongCat's size buckets take the input's
aspect ratio). Answers are remembered per (path, size, mtime), so a sweep asks each file once.
"""

from __future__ import annotations

import functools
from pathlib import Path

#: Extensions read as still images; anything else is asked of ffmpeg as a video.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@functools.lru_cache(maxsize=64)
def pixel_size(path: Path, size: int, mtime_ns: int) -> tuple[int, int] | None:
    """(width, height) of an image (EXIF orientation applied, as every image input is loaded) or
    of a video's first stream; None when it cannot be read (the decode check reports that)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                return ImageOps.exif_transpose(im).size
        except OSError:
            return None
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration):
        return None
    return tuple(meta["size"]) if meta.get("size") else None


def file_pixel_size(path: Path) -> tuple[int, int] | None:
    """``pixel_size`` of ``path`` as it is on disk now; None where it cannot be read or found."""
    try:
        st = path.stat()
    except OSError:
        return None
    return pixel_size(path, st.st_size, st.st_mtime_ns)
