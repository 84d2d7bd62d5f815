"""Can an input be decoded, and how many frames does a video hold: asked before any model loads.

Generation's validation and the training dataset reader both ask; the answers are remembered per
(path, size, mtime), so a sweep or an epoch decodes each file once.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=64)
def image_problem(path: Path, size: int, mtime_ns: int) -> str | None:
    """Why an image cannot be decoded, or None (decoded fully: a truncated file fails here)."""
    from PIL import Image, UnidentifiedImageError

    from wanflow.output.media import describe_file  # numpy: only when an input is checked

    try:
        with Image.open(path) as im:
            im.load()
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return (f"not a readable image ({str(exc).strip() or type(exc).__name__}); it looks like "
                f"{describe_file(path)}; use a PNG, JPEG or WebP file")
    return None if width and height else f"the image is {width}x{height} pixels; use a non-empty image"


@functools.lru_cache(maxsize=64)
def video_frames(path: Path, wanted: int, size: int, mtime_ns: int) -> tuple[int, str]:
    """(frames of the first video stream decoded, up to ``wanted``; ffmpeg's complaint or "").

    ffmpeg decodes into a null output: every frame is really decoded, none is copied out.
    """
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-nostats", "-i", str(path),
           "-map", "0:v:0", "-frames:v", str(wanted), "-f", "null", "-", "-progress", "pipe:1"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"ffmpeg could not read it: {exc}"
    counts = re.findall(r"^frame=(\d+)$", done.stdout, flags=re.M)
    if done.returncode != 0:
        return (int(counts[-1]) if counts else 0), _ffmpeg_complaint(done.stderr)
    return (int(counts[-1]) if counts else 0), ""


def _ffmpeg_complaint(stderr: str) -> str:
    """ffmpeg's first line that says what is wrong, without its ``[demuxer @ 0x…]`` prefixes."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    if any("matches no streams" in line for line in lines):
        return "it holds no video stream"
    return (lines[0] if lines else "ffmpeg failed")[:200]
