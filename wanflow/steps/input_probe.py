"""What validation asks of an image input besides "can it be decoded" and its size
(``wanflow.media_size``): its transparency.

Answers are remembered per (path, size, mtime), as ``wanflow.output.probe`` does, so a sweep
asks each file once.
"""

from __future__ import annotations

import functools
from pathlib import Path


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
