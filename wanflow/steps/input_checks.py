"""Input files opened at validation, so that a bad one is refused before any model loads.

An image is decoded and must not hide transparent pixels; a video read one frame per output frame
(a source, a control video) is decoded up to the frames the run needs (into ffmpeg's null output:
nothing is copied out); a mask must have the size of the video it masks; a local model source is
matched against the component's file patterns the way resolving its weights will. Each problem
names the file and key, and says what the file or folder looks like instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanflow.errors import display_path
from wanflow.media_size import pixel_size
from wanflow.output.probe import image_problem, video_frames
from wanflow.sources.files import file_problem, match
from wanflow.steps.camera_poses import camera_problems
from wanflow.steps.input_probe import transparent_pixels

Where = Callable[[str], str]

#: Image inputs the conditioners read when they are set (CLIP and/or VAE conditioning).
IMAGE_INPUTS = ("image", "end_image", "reference_image")
#: Videos a mask may belong to, in the order it is compared with them (the first one set).
MASKED_VIDEOS = ("video", "control_video")


def input_problems(resolved: Any, where: Where) -> list[str]:
    """Every input image, video, mask and local model source the run will read, checked."""
    values, found = resolved.values, []
    for name in IMAGE_INPUTS:
        if values.get(f"inputs.{name}") is not None:
            found += _image_problems(f"inputs.{name}", Path(values[f"inputs.{name}"]), where)
    frames = values["video.frames"]
    if values.get("inputs.video") is not None and values["sampler.denoising_strength"] < 1:
        found += _video_problems("inputs.video", Path(values["inputs.video"]), frames, where,
                                 "video-to-video reads one input frame per output frame")
    if values.get("inputs.control_video") is not None:
        found += _video_problems("inputs.control_video", Path(values["inputs.control_video"]), frames, where,
                                 "the control video steers each output frame with one of its own")
    if values.get("inputs.vap_video") is not None:
        found += _video_problems("inputs.vap_video", Path(values["inputs.vap_video"]), frames, where,
                                 "the reference stream reads that many frames, picked evenly across it")
    if values.get("inputs.longcat_video") is not None:
        found += _longcat_problems(values, where)
    if values.get("inputs.mask") is not None:
        found += _mask_problems(values, where)
    if values.get("inputs.camera.pose_file") is not None:
        found += camera_problems(values, resolved.origins, where)
    found += _vace_problems(values, where)
    for name, override in resolved.recipe.models.items():
        found += _source_problems(name, override, resolved.family, where)
    return found


def format_value(value: Any) -> str:
    """A value as a recipe writes it (strings quoted), for messages."""
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return repr(value)


def _label(key: str, path: Path | str) -> str:
    table, _, name = key.rpartition(".")
    return f"[{table}].{name} = {format_value(display_path(path))}"


def _image_problems(key: str, path: Path, where: Where, label: str | None = None) -> list[str]:
    """An unreadable image, or one whose alpha channel hides pixels; ``label`` names one of several."""
    if not path.is_file():
        return []  # a missing file or a folder is a recipe problem, already reported
    why = image_problem(path, *_stamp(path))
    if why is None and (hidden := transparent_pixels(path, *_stamp(path))):
        why = (f"the image has an alpha channel with {hidden} transparent pixel{'s' * (hidden > 1)}, which "
               "the model would see as whatever colour they hold; flatten it onto the background you "
               "want (e.g. white) and save it as RGB")
    return [f"{where(key)}: {label or _label(key, path)}: {why}"] if why else []


def _mask_problems(values: Any, where: Where) -> list[str]:
    """A mask must cover the video it masks pixel for pixel: both are resized and cropped to the
    clip, so masks of another size or aspect ratio would mark the wrong pixels."""
    key, path = "inputs.mask", Path(values["inputs.mask"])
    video = next((n for n in MASKED_VIDEOS if values.get(f"inputs.{n}") is not None), None)
    if video is None or not path.is_file() or not Path(values[f"inputs.{video}"]).is_file():
        return []
    other = Path(values[f"inputs.{video}"])
    mine, theirs = pixel_size(path, *_stamp(path)), pixel_size(other, *_stamp(other))
    if mine is None or theirs is None or mine == theirs:
        return []
    return [f"{where(key)}: {_label(key, path)}: the mask is {mine[0]}x{mine[1]} pixels and "
            f"[inputs].{video} is {theirs[0]}x{theirs[1]}; use a mask of the video's size, so that "
            f"it marks the same pixels once both are resized to [video].width x height"]


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime) so that a remembered answer is dropped when the file changes."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _video_problems(key: str, path: Path, frames: int, where: Where, why: str) -> list[str]:
    """A video read one frame per output frame must be readable and hold enough frames."""
    if not path.is_file():
        return []
    count, error = video_frames(path, frames, *_stamp(path))
    if error and count < frames:
        from wanflow.output.media import describe_file

        return [f"{where(key)}: {_label(key, path)}: not a readable video ({error}); it looks like "
                f"{describe_file(path)}; use an mp4, mov, mkv or webm file"]
    if count < frames:
        usable = (count - 1) // 4 * 4 + 1 if count else 0
        fix = f"set [video].frames = {usable} (the largest 4n+1 ≤ {count})" if usable else "use a video with frames"
        return [f"{where(key)}: {_label(key, path)}: the video has {count} frames, fewer than the "
                f"{frames} of [video].frames ({why}); use a longer video or {fix}"]
    return []


def _longcat_problems(values: Any, where: Where) -> list[str]:
    """LongCat's video to continue: readable, with at least its conditioning frames once brought
    to [video].fps (every stride-th frame, as the authors do)."""
    from wanflow.steps.longcat_frames import frame_stride, needed_frames, source_rate

    key, path, frames = "inputs.longcat_video", Path(values["inputs.longcat_video"]), values["inputs.longcat_cond_frames"]
    if not path.is_file():
        return []
    count, error = video_frames(path, frames, *_stamp(path))
    if error and count < frames:
        from wanflow.output.media import describe_file

        return [f"{where(key)}: {_label(key, path)}: not a readable video ({error}); it looks like "
                f"{describe_file(path)}; use an mp4, mov, mkv or webm file"]
    try:
        rate = source_rate(path)
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as exc:
        return [f"{where(key)}: {_label(key, path)}: its frame rate cannot be read ({exc}); re-encode it as an mp4"]
    stride = frame_stride(rate, values["video.fps"])
    count, _ = video_frames(path, needed_frames(frames, stride), *_stamp(path))
    if count >= needed_frames(frames, stride):
        return []
    kept = len(range(0, count, stride))
    usable = (kept - 1) // 4 * 4 + 1 if kept else 0
    at = f" ({kept} at [video].fps = {values['video.fps']}: every {stride} of its {rate:g} fps)" if stride > 1 else ""
    fix = f" or set [inputs].longcat_cond_frames = {usable} (the largest 4n+1 ≤ {kept})" if usable else ""
    return [f"{where(key)}: {_label(key, path)}: the video has {count} frames{at}, fewer than the {frames} "
            f"conditioning frames of [inputs].longcat_cond_frames (its last {frames} frames condition the "
            f"clip); use a longer video{fix}"]


def _source_problems(name: str, override: Any, family: Any, where: Where) -> list[str]:
    """A local ``[models.X].source``: a whole weight file, or a folder holding the component's files."""
    text = override.source
    if not text or text.startswith(("modelscope:", "builtin:")):  # "": the family's source
        return []
    path, key = Path(text), f"models.{name}.source"
    label = f"[models.{name}].source = {format_value(display_path(path))}"
    if path.is_file():
        why = file_problem(path)
        return [f"{where(key)}: {label}: {why}; download the file again"] if why else []
    if not path.is_dir() or name not in family.components:
        return []  # missing paths and unknown components are recipe problems, already reported
    patterns = tuple(override.files) or tuple(family.components[name].files)
    found = match(path, patterns)
    if found.missing:
        return [f"{where(key)}: {label}: is a folder without the {name} files "
                f"(nothing matches {', '.join(found.missing)}); it holds {folder_summary(path)}; name the "
                f"weight file itself, or a folder laid out like the model's repository, or set "
                f"[models.{name}].files to the patterns of the files inside it"]
    return [f"{where(key)}: {label}: {rel} {why}; download it again" for rel, why in found.broken]


def folder_summary(path: Path, shown: int = 6) -> str:
    """``3 entries: a.bin, notes.txt, sub/`` — what a folder holds, for messages."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    if not entries:
        return "nothing (it is empty)"
    listed = ", ".join(entries[:shown]) + (", …" if len(entries) > shown else "")
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {listed}"


def _vace_problems(values: Any, where: Where) -> list[str]:
    """``[inputs.vace]``: a finite scale; opaque reference images; a video (and a mask video) with
    a frame for every output frame; a mask of the video's size, and never a mask without it."""
    import math

    from wanflow.media_size import IMAGE_SUFFIXES

    found, frames = [], values["video.frames"]
    scale = values.get("inputs.vace.scale")
    if scale is not None and not math.isfinite(scale):
        found.append(f"{where('inputs.vace.scale')}: [inputs.vace].scale = {scale!r}: must be a finite "
                     "number ≥ 0 (1.0 adds the VACE hints at full strength)")
    refs = values.get("inputs.vace.reference")
    if isinstance(refs, str):
        found += _image_problems("inputs.vace.reference", Path(refs), where)
    for i, ref in enumerate(refs if isinstance(refs, (list, tuple)) else ()):  # named by place
        label = f"[inputs.vace].reference[{i}] = {format_value(display_path(ref))}"
        found += _image_problems("inputs.vace.reference", Path(ref), where, label)
    video, mask = values.get("inputs.vace.video"), values.get("inputs.vace.mask")
    if video is not None:
        found += _video_problems("inputs.vace.video", Path(video), frames, where,
                                 "VACE reads one video frame per output frame")
    if mask is None:
        return found
    if video is None:
        return [*found, f"{where('inputs.vace.mask')}: {_label('inputs.vace.mask', mask)}: a mask marks "
                "which pixels of [inputs.vace].video to regenerate, and no video is set; set "
                "[inputs.vace].video, or remove the mask to generate every pixel"]
    if Path(mask).suffix.lower() not in IMAGE_SUFFIXES:
        found += _video_problems("inputs.vace.mask", Path(mask), frames, where,
                                 "a mask video marks each output frame with one of its own")
    mine, theirs = Path(mask), Path(video)
    if not mine.is_file() or not theirs.is_file():
        return found
    sizes = pixel_size(mine, *_stamp(mine)), pixel_size(theirs, *_stamp(theirs))
    if None not in sizes and sizes[0] != sizes[1]:
        (mw, mh), (vw, vh) = sizes
        found.append(f"{where('inputs.vace.mask')}: {_label('inputs.vace.mask', mask)}: the mask is {mw}x{mh} "
                     f"pixels and [inputs.vace].video is {vw}x{vh}; use a mask of the video's size, so that "
                     "it marks the same pixels once both are resized to [video].width x height")
    return found
