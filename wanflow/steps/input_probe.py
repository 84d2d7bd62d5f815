"""What validation asks of a conditioning file besides "can it be decoded": transparency and size.

Answers are remembered per (path, size, mtime), as ``wanflow.output.probe`` does, so a sweep
asks each file once.
"""

from __future__ import annotations

import functools
from pathlib import Path

#: Extensions read as still images; anything else is asked of ffmpeg as a video.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@functools.lru_cache(maxsize=64)
def transparent_pixels(path: Path, size: int, mtime_ns: int) -> int:
    """How many pixels of an image are not fully opaque (0 without an alpha channel).

    Conditioning reads RGB: converting drops the alpha channel, and what the transparent pixels
    hold (often black) would reach the model unseen.
    """
    from PIL import Image

    with Image.open(path) as im:
        has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        if not has_alpha:
            return 0
        alpha = im.convert("RGBA").getchannel("A")
        return sum(alpha.histogram()[:255])  # pixels with alpha < 255


@functools.lru_cache(maxsize=64)
def pixel_size(path: Path, size: int, mtime_ns: int) -> tuple[int, int] | None:
    """(width, height) of an image or of a video's first stream; None when it cannot be read
    (the decode check reports that)."""
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
