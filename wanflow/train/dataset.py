"""A training dataset, checked whole before any model loads: every bad row is reported at once.

Metadata uses DiffSynth's columns (``video`` or ``image``, ``prompt``, and the extra inputs a family
takes), or a folder of media with ``.txt`` captions (see ``wanflow.train.metadata``). Every file a row
names is opened: images decoded, videos decoded up to the frames training reads. The result is a
tuple of frozen samples of plain values, so a later step can key each sample's encodes by the file's
digest and the preprocessing parameters (target size, frame count, which frame).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import attrs

from wanflow.errors import WanflowError, display_path
from wanflow.train.buckets import BucketRow, Sizing, Target, bucket_table, target_for
from wanflow.train.metadata import IMAGE_SUFFIXES, Row, Table, read_table
from wanflow.train.probe import Media, probe_media


class DatasetError(WanflowError):
    """A dataset cannot be trained on; carries every problem found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        super().__init__(f"the training dataset has {count}:\n" + "\n".join(f"  {p}" for p in self.problems))


@attrs.frozen
class Column:
    """An extra-input column: the family input it feeds and what its value is."""

    family_input: str  # the name in ``FamilySpec.accepted_inputs``
    kind: str  # "image" | "video" | "audio": a file; "value": passed as written


#: DiffSynth's extra-input columns, by the family input each one feeds.
COLUMNS: Mapping[str, Column] = {
    "input_image": Column("image", "image"),
    "end_image": Column("end_image", "image"),
    "control_video": Column("control_video", "video"),
    "reference_image": Column("reference_image", "image"),
    "vace_video": Column("vace", "video"),
    "vace_video_mask": Column("vace", "video"),
    "vace_reference_image": Column("vace", "image"),
    "pose_video": Column("pose_video", "video"),
    "face_video": Column("face_video", "video"),
    "input_audio": Column("audio", "audio"),
    "s2v_pose_video": Column("s2v_pose_video", "video"),
    "camera_control_direction": Column("camera", "value"),
    "camera_control_speed": Column("camera", "value"),
    "camera_pose_file": Column("camera", "file"),
    "motion_bucket_id": Column("motion_bucket", "value"),
    "animate_pose_video": Column("pose_video", "video"),
    "animate_face_video": Column("face_video", "video"),
    "animate_inpaint_video": Column("background_video", "video"),
    "animate_mask_video": Column("mask", "video"),
    "vap_video": Column("vap_video", "video"),
    "vap_prompt": Column("vap_prompt", "value"),
    "longcat_video": Column("longcat_video", "video"),
}
#: Columns cut to the clip's frames less 4 (DiffSynth's ``AnimateVideoSplit``: latent frame 0 of
#: an Animate clip is its reference image's), and those that must be the clip's own size.
SHORTER_BY_4 = ("animate_pose_video", "animate_face_video", "animate_inpaint_video", "animate_mask_video")
CLIP_SIZED = ("animate_pose_video", "animate_inpaint_video", "animate_mask_video")
#: Fun Control-Camera's preset directions (``[inputs.camera].direction``'s choices).
CAMERA_DIRECTIONS = ("Left", "Right", "Up", "Down", "LeftUp", "LeftDown", "RightUp", "RightDown", "ZoomIn", "ZoomOut")
#: The motion bucket ids speed control was trained on (``[inputs].motion_bucket``'s range).
MOTION_BUCKETS = (0, 100)
#: DiffSynth's columns of inputs that training does not take, with why and the fix.
UNTRAINED_COLUMNS: Mapping[str, str] = {
    "motion_video": "is not a training input: speech-to-video trains every sample as a first clip, without "
                    "motion context, as DiffSynth trains it; remove the column",
}
MEDIA_COLUMNS = ("video", "image")
KNOWN_COLUMNS = (*MEDIA_COLUMNS, "prompt", *COLUMNS)


@attrs.frozen
class InputRef:
    """An input file, or one frame of the sample's own clip (DiffSynth's first/last-frame default)."""

    path: str  # absolute
    frame: int | None = None  # index into the sample's clip; None: the whole file


@attrs.frozen
class Sample:
    """One training sample, in plain values: what to read, at which size, in which bucket."""

    index: int  # 0-based position in the dataset
    row: int  # 1-based row of the metadata (or position in the sorted folder)
    kind: str  # "video" | "image"
    media: str  # absolute path of the clip or image
    prompt: str
    inputs: tuple[tuple[str, InputRef], ...]  # (column, file), sorted by column
    values: tuple[tuple[str, str], ...]  # (column, value) for value columns, sorted
    target: Target
    bucket: str

    def input(self, column: str) -> InputRef | None:
        return dict(self.inputs).get(column)


@attrs.frozen
class Dataset:
    """The checked samples, how often an epoch repeats them, and the bucket table."""

    source: str
    samples: tuple[Sample, ...]
    repeat: int
    buckets: tuple[BucketRow, ...]

    def epoch(self) -> tuple[Sample, ...]:
        """One epoch: every sample ``repeat`` times, in dataset order (shuffling is the trainer's)."""
        return self.samples * self.repeat


@attrs.frozen
class _Context:
    table: Table
    base: Path
    sizing: Sizing
    accepted: frozenset[str]
    required: frozenset[str]
    family: str
    probe: Callable[[Path, str, int], tuple[Media | None, str]] = probe_media
    frame_inputs: frozenset[str] | None = None  # columns a clip frame fills; None: the base rule
    refused: Mapping[str, str] = attrs.field(factory=dict)  # column -> why the family cannot train on it


def load_dataset(metadata: str | Path, *, sizing: Sizing, accepted_inputs: Collection[str],
                 required_inputs: Collection[str] = (), family: str = "the family",
                 base_path: str | Path | None = None, repeat: int = 1,
                 probe: Callable[[Path, str, int], tuple[Media | None, str]] = probe_media,
                 frame_inputs: Collection[str] | None = None, refused: Mapping[str, str] | None = None) -> Dataset:
    """Read and check a dataset; raises ``DatasetError`` listing every problem.

    Args:
        accepted_inputs, required_inputs: the family's (``FamilySpec``), e.g. {"image"} for I2V.
        base_path: where relative media paths resolve (default: the metadata file's folder).
        probe: opens one media file (``probe_media``'s contract); a caller may remember answers.
        frame_inputs: the columns (``input_image``, ``end_image``) a frame of the clip fills when a
            row leaves them empty; None: the base families' rule (``_frame_defaults``).
        refused: columns the family takes at inference but cannot train on, with the reason.
    """
    path = Path(metadata)
    problems = [f"{p}; fix the dataset sizing" for p in sizing.problems()]
    if repeat < 1:
        problems.append(f"repeat = {repeat}: must be at least 1")
    if not path.exists():
        raise DatasetError(problems + [(f"{display_path(path)}: no such metadata file or folder; name a .csv, "
                                       ".json or .jsonl file, or a folder of media with .txt captions")])
    table = read_table(path)
    base = Path(base_path) if base_path is not None else (path if path.is_dir() else path.parent)
    if not base.is_dir():
        problems.append(f"base_path = {display_path(base)}: no such folder; name the folder media paths are "
                        "relative to")
    ctx = _Context(table, base.resolve(), sizing, frozenset(accepted_inputs), frozenset(required_inputs), family,
                   probe, None if frame_inputs is None else frozenset(frame_inputs), dict(refused or {}))
    problems += list(table.problems) + _column_problems(ctx)
    if problems and (sizing.problems() or not base.is_dir()):
        raise DatasetError(problems)  # no row can be sized or found
    samples = []
    for row in table.rows:
        sample, found = _sample(row, len(samples), ctx)
        problems += found
        samples += [sample] if sample else []
    if not table.rows and not problems:
        problems.append(f"{display_path(path)}: holds no rows; add a row per clip (video or image, prompt)")
    if problems:
        raise DatasetError(problems)
    return Dataset(str(path.resolve()), tuple(samples), repeat, bucket_table(s.target for s in samples))


def _rows_naming(table: Table, column: str) -> str:
    numbers = [row.number for row in table.rows if column in row.values]
    shown = ", ".join(map(str, numbers[:5])) + (", …" if len(numbers) > 5 else "")
    return f"row{'s' * (len(numbers) != 1)} {shown}" if numbers else "the header"


def _column_problems(ctx: _Context) -> list[str]:
    """Unknown columns, and columns of inputs the family does not take (each reported once)."""
    name, found = display_path(ctx.table.source), []
    for column in ctx.table.columns:
        where = f"{name} column {column!r} ({_rows_naming(ctx.table, column)})"
        if column in UNTRAINED_COLUMNS:
            found.append(f"{where}: {UNTRAINED_COLUMNS[column]}")
        elif column not in KNOWN_COLUMNS:
            close = difflib.get_close_matches(column, KNOWN_COLUMNS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            found.append(f"{where}: unknown column; {hint}known columns: {', '.join(KNOWN_COLUMNS)}")
        elif column in ctx.refused:
            found.append(f"{where}: {ctx.refused[column]}")
        elif column in COLUMNS and COLUMNS[column].family_input not in ctx.accepted:
            takes = ", ".join(sorted(ctx.accepted)) or "no extra inputs"
            found.append(f"{where}: {ctx.family} does not take the {COLUMNS[column].family_input!r} input "
                         f"(it takes {takes}); remove the column or train another family")
    return found


def _sample(row: Row, index: int, ctx: _Context) -> tuple[Sample | None, list[str]]:
    named = [c for c in MEDIA_COLUMNS if c in row.values]
    if len(named) != 1:
        why = ("names both a video and an image; a row trains on one, so split it into two rows" if named
               else "names no clip; set the video column (or image) to the clip's path")
        return None, [f"{row.where}: {why}"] + _prompt_problems(row)
    column = named[0]
    kind = "image" if Path(row.values[column]).suffix.lower() in IMAGE_SUFFIXES else "video"
    media, found = _media(row, column, ctx, kind=kind)
    found += _prompt_problems(row)
    target = None
    if media is not None:
        target = target_for(media.width, media.height, media.frames if kind == "video" else None, ctx.sizing)
        if target is None:
            found.append(_too_short(row, column, media, ctx.sizing))
    inputs, values, input_found = _inputs(row, target, ctx, media if kind == "video" else None)
    found += input_found
    if found or target is None:
        return None, found
    return Sample(index, row.number, kind, media.path, row.values["prompt"].strip(),
                  _defaults(inputs, media.path, target, ctx), values, target, target.bucket), []


def _label(row: Row, column: str) -> str:
    return f"{row.where}: {column} = {row.values[column]!r}"


def _media(row: Row, column: str, ctx: _Context, frames: int | None = None,
           kind: str | None = None) -> tuple[Media | None, list[str]]:
    """The probed file a column names (DiffSynth routes a clip by its suffix: an image is one frame)."""
    path = Path(row.values[column]).expanduser()
    path = path if path.is_absolute() else ctx.base / path
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        return None, [(f"{_label(row, column)}: {display_path(path)} {what}; fix the path (relative paths resolve "
                      f"against {display_path(ctx.base)})")]
    kind = kind or COLUMNS[column].kind
    wanted = ctx.sizing.max_frames if frames is None else frames
    media, why = ctx.probe(path, kind, wanted)
    return (media, []) if media else (None, [f"{_label(row, column)}: {why}"])


def _prompt_problems(row: Row) -> list[str]:
    prompt = row.values.get("prompt")
    if prompt is None and row.prompt_source.startswith("caption"):
        return [f"{row.where}: {row.prompt_source} does not exist; write the clip's prompt into it"]
    if prompt is None or not prompt.strip():
        return [f"{row.where}: {row.prompt_source} is empty; write the clip's prompt there"]
    return []


def _too_short(row: Row, column: str, media: Media, sizing: Sizing) -> str:
    allowed = (f"the frame buckets {', '.join(map(str, sizing.frame_buckets))}" if sizing.frame_buckets
               else f"min_frames = {sizing.min_frames}")
    return (f"{_label(row, column)}: the video has {media.frames} frames, too short for {allowed}; "
            "use a longer clip, remove the row, or lower the minimum")


def _inputs(row: Row, target: Target | None, ctx: _Context,
            clip: Media | None = None) -> tuple[dict, tuple, list[str]]:
    """The row's extra inputs: files checked (videos must cover the clip's frames), values kept."""
    files, values, found = {}, [], []
    probed: dict[str, Media] = {}
    for column in sorted(c for c in row.values if c in COLUMNS and COLUMNS[c].family_input in ctx.accepted
                         and c not in ctx.refused):
        kind = _kind(row, column)
        if kind == "value":
            why = _value_problem(column, row.values[column])
            found += [f"{_label(row, column)}: {why}"] if why else []
            values.append((column, row.values[column]))
            continue
        if kind == "file":
            path, why = _file(row, column, ctx)
            found += why
            files |= {column: InputRef(path)} if path else {}
            continue
        frames = target.frames if target is not None and kind == "video" else 1
        if column in SHORTER_BY_4 and target is not None:
            frames = target.frames - 4
            if frames < 1:
                found.append(f"{_label(row, column)}: the clip trains on {target.frames} frame(s), and this video "
                             "covers the clip's frames after its first 4 (the reference image's latent frame); "
                             "train on clips of at least 5 frames ([train].frames, frame_buckets)")
                continue
        media, why = _media(row, column, ctx, frames, kind=kind)
        found += why
        if media is not None and kind == "video" and target is not None and media.frames < frames:
            whole = "as long as the clip" if frames == target.frames else f"{frames} frames long (the clip's less 4)"
            found.append(f"{_label(row, column)}: has {media.frames} frames, fewer than the {frames} the "
                         f"clip trains on; use a {column.replace('_', ' ')} at least {whole}")
        elif media is not None:
            files[column] = InputRef(media.path)
            probed[column] = media
    found += _missing_required(row, ctx) + _pair_problems(row, probed, clip)
    return files, tuple(values), found


def _kind(row: Row, column: str) -> str:
    """A column's kind; a VACE mask may be a video or one image held for every frame."""
    if column == "vace_video_mask" and Path(row.values[column]).suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return COLUMNS[column].kind


def _value_problem(column: str, text: str) -> str:
    """What is wrong with a value column's text, as the recipe's [inputs] would refuse it ("" if fine)."""
    if column == "camera_control_direction" and text not in CAMERA_DIRECTIONS:
        close = difflib.get_close_matches(text, CAMERA_DIRECTIONS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"is not a camera direction; {hint}use one of {', '.join(CAMERA_DIRECTIONS)}"
    if column == "camera_control_speed":
        try:
            speed = float(text)
        except ValueError:
            return "is not a number; write the camera's step per frame, e.g. 0.0185 (1/54, the default)"
        if not speed > 0 or speed == float("inf"):
            return "must be a finite number > 0 (the camera's step per frame; 1/54 is the default)"
    if column == "vap_prompt" and not text.strip():
        return "is empty; write the caption of the reference video (what happens in it)"
    if column == "motion_bucket_id":
        lo, hi = MOTION_BUCKETS
        try:
            bucket = float(text)
        except ValueError:
            bucket = None
        if bucket is None or bucket != int(bucket) or not lo <= bucket <= hi:
            return (f"must be a whole number from {lo} (slow) to {hi} (fast), the range the motion controller "
                    "was trained on")
    return ""


def _file(row: Row, column: str, ctx: _Context) -> tuple[str | None, list[str]]:
    """A column naming a plain file (a camera pose file): it must exist; its content is checked
    where it is read."""
    path = Path(row.values[column]).expanduser()
    path = path if path.is_absolute() else ctx.base / path
    if path.is_file():
        return str(path.resolve()), []
    what = "is a folder" if path.is_dir() else "does not exist"
    return None, [(f"{_label(row, column)}: {display_path(path)} {what}; fix the path (relative paths resolve "
                  f"against {display_path(ctx.base)})")]


def _pair_problems(row: Row, probed: Mapping[str, Media], clip: Media | None = None) -> list[str]:
    """Columns that only make sense together: a VACE mask of the VACE video's size beside it, a
    pose file without a direction or speed beside it."""
    found = []
    if "vace_video_mask" in row.values and "vace_video" not in row.values:
        found.append(f"{_label(row, 'vace_video_mask')}: a mask says which pixels of the VACE video to "
                     "regenerate, and the row has no vace_video; set it, or remove the mask to generate "
                     "every pixel")
    mask, video = probed.get("vace_video_mask"), probed.get("vace_video")
    if mask and video and (mask.width, mask.height) != (video.width, video.height):
        found.append(f"{_label(row, 'vace_video_mask')}: is {mask.width}x{mask.height}, but vace_video is "
                     f"{video.width}x{video.height}; the mask must mark the video's own pixels: use a mask of "
                     "the video's size")
    found += _animate_pair_problems(row, probed, clip)
    if "camera_pose_file" in row.values:
        beside = [c for c in ("camera_control_direction", "camera_control_speed") if c in row.values]
        found += [f"{_label(row, c)}: is set beside camera_pose_file, which gives every pose itself; remove one "
                  "of the two" for c in beside]
    return found


def _animate_pair_problems(row: Row, probed: Mapping[str, Media], clip: Media | None) -> list[str]:
    """Animate videos that must mark the clip's own pixels are the clip's size, and an inpaint
    video comes with its mask (DiffSynth builds the replacement condition from both)."""
    found = []
    for column in CLIP_SIZED:
        media = probed.get(column)
        if clip and media and (media.width, media.height) != (clip.width, clip.height):
            found.append(f"{_label(row, column)}: is {media.width}x{media.height}, but the clip is "
                         f"{clip.width}x{clip.height}; it must be aligned with the clip's pixels: use a video of "
                         "the clip's size")
    pair = ("animate_inpaint_video", "animate_mask_video")
    for have, lack in (pair, pair[::-1]):
        if have in row.values and lack not in row.values:
            found.append(f"{_label(row, have)}: replacement needs both {have} and {lack}; set {lack}, or remove "
                         f"{have}")
    return found


def _missing_required(row: Row, ctx: _Context) -> list[str]:
    """Required inputs that neither the row nor a frame of its clip supplies."""
    defaulted = {COLUMNS[c].family_input for c in _frame_defaults(ctx)}
    given = {COLUMNS[c].family_input for c in row.values if c in COLUMNS}
    columns = {spec.family_input: c for c, spec in reversed(COLUMNS.items()) if c not in ctx.refused}
    return [f"{row.where}: {ctx.family} requires the {name!r} input; set the {columns.get(name, name)} column"
            for name in sorted(ctx.required - defaulted - given)]


def _frame_defaults(ctx: _Context) -> dict[str, str]:
    """Columns filled from the clip when a row leaves them empty (DiffSynth's rule), by which frame.

    ``input_image`` is the first frame wherever the family takes an image (I2V, FLF2V, TI2V train
    on it); ``end_image`` the last frame only where the family requires one (FLF2V), so an I2V
    family that merely accepts an end image does not learn to always see one.
    """
    if ctx.frame_inputs is not None:
        return {c: w for c, w in (("input_image", "first"), ("end_image", "last")) if c in ctx.frame_inputs}
    out = {}
    if "image" in ctx.accepted:
        out["input_image"] = "first"
    if "end_image" in ctx.required:
        out["end_image"] = "last"
    return out


def _defaults(files: dict, media: str, target: Target, ctx: _Context) -> tuple[tuple[str, InputRef], ...]:
    for column, which in _frame_defaults(ctx).items():
        files.setdefault(column, InputRef(media, 0 if which == "first" else target.frames - 1))
    return tuple(sorted(files.items()))
