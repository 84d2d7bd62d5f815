"""Reading conditioning inputs (images, videos) as uint8 RGB arrays, and converting to model tensors.

An image or frame whose aspect ratio differs from the target is scaled to cover it and then
centre-cropped, as the official Wan pipelines do (Lanczos resize, crop offsets ``(size - target) // 2``),
and the log says so. Every failure to read names the file and what it looks like instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import structlog

from wanflow.errors import ModelInputError
from wanflow.file_kinds import describe_file

log = structlog.get_logger(__name__)

def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelInputError(f"{path}: no such {what} file; check the path in [inputs]")
    if path.is_dir():
        raise ModelInputError(f"{path}: is a folder, not an {what} file; name a file inside it")
    return path


def _check_size(width: int, height: int, path: Path) -> None:
    if int(width) < 1 or int(height) < 1:
        raise ModelInputError(f"{path}: target size {width}x{height} must be at least 1x1")


def cover_crop(image, width: int, height: int):
    """Scale a PIL image to cover ``width``×``height`` (Lanczos), then crop its centre."""
    from PIL import Image

    iw, ih = image.size
    scale = max(width / iw, height / ih)
    size = (max(width, round(iw * scale)), max(height, round(ih * scale)))
    if size != (iw, ih):
        image = image.resize(size, Image.LANCZOS)
    x0, y0 = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((x0, y0, x0 + width, y0 + height))


def _log_crop(path: Path, iw: int, ih: int, width: int, height: int) -> None:
    if iw * height != ih * width:
        log.info("input resized and centre-cropped to the video's aspect ratio", file=str(path),
                 source_size=f"{iw}x{ih}", target_size=f"{width}x{height}")


def load_image(path: str | os.PathLike, width: int, height: int) -> np.ndarray:
    """An input image as uint8 (H, W, 3) RGB at the target size (EXIF rotation applied first)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _existing(path, "image")
    _check_size(width, height, path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ModelInputError(f"{path}: not a readable image ({exc}); it looks like {describe_file(path)}; "
                              "use a PNG, JPEG or WebP file") from None
    _log_crop(path, *rgb.size, width, height)
    return np.asarray(cover_crop(rgb, width, height), dtype=np.uint8)  # (H, W, 3)


def load_video(path: str | os.PathLike, frames: int, width: int, height: int,
               fps: float | None = None) -> np.ndarray:
    """The first ``frames`` frames of a video as uint8 (T, H, W, 3), each resized and cropped like an image.

    With ``fps``, ffmpeg first resamples the video to that rate (dropping or repeating frames).
    """
    from PIL import Image

    path = _existing(path, "video")
    _check_size(width, height, path)
    if int(frames) < 1:
        raise ModelInputError(f"{path}: asked for {frames} frames; ask for at least 1")
    (sw, sh), raw = _read_frames(path, int(frames), fps)
    if len(raw) < frames:
        rate = f" at {fps} fps" if fps else ""
        raise ModelInputError(f"{path}: the video has {len(raw)} frames{rate}, fewer than the {frames} asked for; "
                              f"use a longer video or set [video].frames ≤ {len(raw)}")
    _log_crop(path, sw, sh, width, height)
    out = [np.asarray(cover_crop(Image.frombuffer("RGB", (sw, sh), f), width, height)) for f in raw]
    return np.stack(out).astype(np.uint8)  # (T, H, W, 3)


def _read_frames(path: Path, frames: int, fps: float | None) -> tuple[tuple[int, int], list[bytes]]:
    import imageio_ffmpeg

    params = ["-vf", f"fps={fps}"] if fps else None
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=params)
    try:
        meta = gen.__next__()
        raw = [f for _, f in zip(range(frames), gen)]
    except (OSError, RuntimeError, StopIteration, ValueError) as exc:
        raise _unreadable_video(path, str(exc).strip() or type(exc).__name__) from None
    finally:
        gen.close()
    if not raw:
        raise ModelInputError(f"{path}: the video holds no frames ({describe_file(path)}); use a video with frames")
    return tuple(meta["size"]), [bytes(f) for f in raw]


def _unreadable_video(path: Path, text: str) -> ModelInputError:
    if "does not contain any stream" in text:  # ffmpeg found no video stream to decode
        return ModelInputError(f"{path}: the video holds no frames (no video stream; it looks like "
                               f"{describe_file(path)}); use a video with frames")
    return ModelInputError(f"{path}: not a readable video ({text.splitlines()[-1][:200]}); it looks like "
                           f"{describe_file(path)}; use an mp4, mov, mkv or webm file")


def to_model_video(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1], the VAE's input range."""
    x = np.asarray(frames, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # (C, T, H, W)


def to_model_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3, 1, H, W) in [-1, 1]: a one-frame video."""
    return to_model_video(np.asarray(image)[None])


def to_uint8_frames(video) -> np.ndarray:
    """A decoded (3, T, H, W) video in [-1, 1] (numpy or torch) -> uint8 (T, H, W, 3), rounded, clipped."""
    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    x = np.asarray(video, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] != 3:
        raise ModelInputError(f"decoded video: expected (3, T, H, W), got {tuple(x.shape)}")
    x = np.clip((x + 1.0) * 127.5, 0.0, 255.0)
    return np.rint(x).astype(np.uint8).transpose(1, 2, 3, 0)  # (T, H, W, 3)
