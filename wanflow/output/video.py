"""Writing videos: H.264 mp4 through imageio-ffmpeg with the run's metadata inside and beside it.

Frames are uint8 (T, H, W, 3) RGB. libx264 with yuv420p (the pixel format every player takes)
needs even width and height: an odd size is padded by one row or column repeating the edge, and
the real size is recorded as ``frame_size`` in the metadata. Every write goes to a temporary
file in the same folder and is renamed into place, so a crash never leaves a half video.

The bytes depend only on the frames, fps, quality and metadata, never on the machine: x264 picks
its thread count from the CPU cores unless told, and its output (and the options string it writes
into the stream) changes with that count; see ``DETERMINISTIC_PARAMS``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import structlog

from wanflow.errors import ModelInputError, WanflowError

log = structlog.get_logger(__name__)

MAX_COMMENT = 60_000  # bytes; a command-line argument must stay far below Linux's 128 KiB limit
X264_THREADS = 4  # fixed: x264 is deterministic for a given thread count, and "auto" follows the cores

#: ffmpeg options that make the file a function of its inputs alone: a fixed x264 thread count,
#: one thread for the RGB → YUV conversion, no version-bearing "encoder" tags, no copied metadata.
DETERMINISTIC_PARAMS = ("-threads", str(X264_THREADS), "-filter_threads", "1",
                        "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1")

#: Output suffixes ``wanflow reproduce`` decodes to compare frames when the bytes differ.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".gif")


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Frames must be uint8 (T, H, W, 3) with T ≥ 1; anything else is a bug upstream, said plainly."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ModelInputError(f"video frames: expected uint8 (T, H, W, 3) with T, H, W ≥ 1, got "
                              f"{frames.dtype} {tuple(frames.shape)}; convert with to_uint8_frames()")
    return frames


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where H or W is odd: yuv420p stores colour per 2×2 block."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # (T, H+h%2, W+w%2, 3)


def save_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float, metadata: Mapping[str, object], *,
             quality: int = 18) -> list[Path]:
    """Write ``path`` (H.264, CRF ``quality``) and ``<name>.json``; the metadata goes in both."""
    frames, path = check_frames(frames), Path(path)
    if not 0 <= int(quality) <= 51 or not fps > 0:
        raise ModelInputError(f"{path.name}: quality (CRF) must be 0..51 and fps > 0, got {quality} and {fps}")
    _, h, w, _ = frames.shape
    meta = dict(metadata) | ({"frame_size": [w, h]} if h % 2 or w % 2 else {})
    comment = json.dumps(meta, sort_keys=True, ensure_ascii=True, default=str)
    if len(comment) > MAX_COMMENT:
        raise ModelInputError(f"{path.name}: metadata is {len(comment)} bytes as JSON, more than {MAX_COMMENT}; "
                              "keep digests and the seed in it, not whole tensors or files")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: _encode(pad_to_even(frames), tmp, fps, int(quality), comment))
    sidecar = path.with_suffix(".json")
    text = json.dumps(meta, sort_keys=True, ensure_ascii=False, indent=2, default=str) + "\n"
    _atomic(sidecar, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    log.debug("video written", frames=len(frames), size=f"{w}x{h}", fps=fps, crf=quality)
    return [path, sidecar]


def _atomic(path: Path, write) -> None:
    """Write through ``.<name>.<pid>.tmp<suffix>`` beside ``path`` and rename; remove it on failure."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _encode(frames: np.ndarray, path: Path, fps: float, crf: int, comment: str) -> None:
    import imageio_ffmpeg

    _, h, w, _ = frames.shape
    params = ["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart", *DETERMINISTIC_PARAMS,
              "-metadata", f"comment={comment}"]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", quality=None, macro_block_size=1,
                                         output_params=params, ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a video as uint8 (T, H, W, 3) RGB, as ffmpeg decodes it (to compare two files)."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise WanflowError(f"{path}: no such video file; check the path")
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        w, h = next(reader)["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    except (OSError, RuntimeError, StopIteration) as exc:
        raise WanflowError(f"{path}: ffmpeg cannot decode it ({exc}); is it a whole video file?") from None
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)  # (T, H, W, 3)


def describe_difference(old: str | os.PathLike, new: str | os.PathLike) -> str:
    """For two videos whose bytes differ: are the decoded frames the same (only the encoder
    differs), or which frame differs first and by how much ("" for files that are not videos)."""
    if not str(old).lower().endswith(VIDEO_SUFFIXES):
        return ""
    try:
        a, b = read_frames(old), read_frames(new)
    except WanflowError as exc:
        return f"frames not compared: {exc}"
    if a.shape != b.shape:
        return (f"frames differ ({a.shape[0]} frames of {a.shape[2]}×{a.shape[1]} → "
                f"{b.shape[0]} of {b.shape[2]}×{b.shape[1]})")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))  # (T, H, W, 3)
    if not diff.any():
        return "bytes differ but decoded frames are identical (encoder difference)"
    first = int(np.flatnonzero(diff.reshape(len(diff), -1).max(axis=1))[0])
    return f"frames differ (max abs diff {int(diff.max())}, first differing frame {first} of {len(a)})"


def save_png_frames(frames: np.ndarray, folder: str | os.PathLike, stem: str = "frame") -> list[Path]:
    """Every frame as ``<stem>_00000.png`` for editing; each file written atomically."""
    from PIL import Image

    frames, folder = check_frames(frames), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(frames) - 1)))
    out = []
    for i, frame in enumerate(frames):
        path = folder / f"{stem}_{i:0{width}d}.png"
        _atomic(path, lambda tmp, f=frame: Image.fromarray(f).save(tmp, format="PNG"))
        out.append(path)
    return out


def read_mp4_tags(path: str | os.PathLike) -> dict[str, str]:
    """The container's metadata tags (``comment``, ``encoder``…), read with ffmpeg's ffmetadata muxer."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise WanflowError(f"{path}: no such video file; check the path")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        raise WanflowError(f"{path}: ffmpeg cannot read it ({done.stderr.decode(errors='replace').strip()[-300:]}); "
                           "is it a whole video file?")
    return parse_ffmetadata(done.stdout.decode("utf-8", errors="replace"))


def parse_ffmetadata(text: str) -> dict[str, str]:
    """Global ``key=value`` lines of an ffmetadata file; '\\' escapes '=', ';', '#', '\\' and newlines."""
    tags: dict[str, str] = {}
    for line in _logical_lines(text):
        first = "".join(ch for ch, _ in line[:1])
        if first == "[" and not line[0][1]:
            break  # stream or chapter sections follow the global tags
        if not line or (first in ";#" and not line[0][1]):
            continue
        cut = next((i for i, (ch, esc) in enumerate(line) if ch == "=" and not esc), len(line))
        tags["".join(ch for ch, _ in line[:cut])] = "".join(ch for ch, _ in line[cut + 1:])
    return tags


def _logical_lines(text: str) -> list[list[tuple[str, bool]]]:
    """Lines as (char, was_escaped) pairs; an escaped newline stays inside its line."""
    lines: list[list[tuple[str, bool]]] = [[]]
    escaped = False
    for ch in text:
        if escaped:
            lines[-1].append((ch, True))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "\n":
            lines.append([])
        else:
            lines[-1].append((ch, False))
    return lines


def read_mp4_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The metadata mapping that ``save_mp4`` wrote into the video's comment (for ``wanflow reproduce``)."""
    comment = read_mp4_tags(path).get("comment")
    if comment is None:
        raise WanflowError(f"{path}: the video has no comment metadata; it was not written by wanflow "
                           "(use its sidecar .json if there is one)")
    try:
        return json.loads(comment)
    except ValueError:
        raise WanflowError(f"{path}: the comment metadata is not wanflow's JSON: {comment[:80]!r}") from None
