"""Camera poses for Fun Control-Camera: a preset direction and speed, or a pose file.

A pose is CameraCtrl's row of 19 numbers: ``[frame, fx, fy, cx, cy, 0, 0, w2c]``, the intrinsics
normalised by the width and height of a 1280x720 source, ``w2c`` the 3x4 world-to-camera matrix
row by row (entries 7..18; its translation is entries 10, 14 and 18). One pose per output frame.

A direction builds the poses from the authors' origin, frame by frame. Two conventions exist:
the Fun authors' preset files (``Pan_Left.txt``…) *move the camera centre* (translation entries
10 / 14 by ``speed`` per frame, 18 by twice that for a zoom), which is what the model was trained
on (real camera trajectories); DiffSynth adds ``speed`` to entries 9 / 13 (and 18 for a zoom),
a shear of the rotation that tilts the rays and leaves the centre at 0 (``"tilt"``).

Torch-free: validation reads pose files with it before any model loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wanflow.errors import display_path

#: Numbers in a pose row.
ROW = 19
#: The authors' first pose: their intrinsics for a 1280x720 source, the identity camera.
ORIGIN = (0.0, 0.532139961, 0.946026558, 0.5, 0.5, 0.0, 0.0,
          1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Convention -> direction word -> (pose entry moved each frame, multiple of ``speed``).
MOVES: Mapping[str, Mapping[str, tuple[int, float]]] = {
    "translate": {"Left": (10, 1.0), "Right": (10, -1.0), "Up": (14, 1.0), "Down": (14, -1.0),
                  "ZoomIn": (18, -2.0), "ZoomOut": (18, 2.0)},
    "tilt": {"Left": (9, 1.0), "Right": (9, -1.0), "Up": (13, 1.0), "Down": (13, -1.0),
             "ZoomIn": (18, -1.0), "ZoomOut": (18, 1.0)},
}
#: Camera settings a pose file replaces (setting them beside one is refused, not ignored).
DIRECTION_KEYS = ("inputs.camera.direction", "inputs.camera.speed")
POSE_KEY = "inputs.camera.pose_file"


class PoseFileError(ValueError):
    """A pose file that is not CameraCtrl's format; the message says what it holds instead."""


def preset_poses(direction: str, speed: float, frames: int, convention: str = "translate") -> list[list[float]]:
    """``frames`` poses from the origin, each moved from the previous by the direction's words
    ("LeftUp" is Left and Up) times ``speed``."""
    moves = [step for word, step in MOVES[convention].items() if word in direction]
    rows = [list(ORIGIN)]
    while len(rows) < frames:
        row = rows[-1].copy()
        for entry, times in moves:
            row[entry] += times * speed
        rows.append(row)
    return rows


def read_pose_file(path: Path, frames: int) -> list[list[float]]:
    """The first ``frames`` poses of a CameraCtrl pose file (a header line, then one row a frame)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise PoseFileError("is not a text file") from None
    first = _numbers(lines[0]) if lines else None
    if first is not None and len(first) == ROW:
        raise PoseFileError("its first line is a pose, but the first line of a pose file is a header "
                            "(a URL, or blank) that is skipped; add a header line above the poses")
    rows = [_row(line, n) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    if len(rows) < frames:
        raise PoseFileError(f"holds {len(rows)} pose{'s' * (len(rows) != 1)}, fewer than the {frames} of "
                            "[video].frames (one pose per output frame); add poses or use fewer frames")
    return rows[:frames]


def _numbers(line: str) -> list[float] | None:
    try:
        return [float(x) for x in line.split()]
    except ValueError:
        return None


def _row(line: str, n: int) -> list[float]:
    """One pose row, checked: 19 finite numbers, positive focal lengths, an invertible rotation."""
    values = _numbers(line)
    shown = line.strip()[:60]
    if values is None:
        raise PoseFileError(f"line {n} is not a row of numbers: {shown!r}")
    if len(values) != ROW:
        raise PoseFileError(f"line {n} holds {len(values)} numbers, not {ROW} (frame, fx, fy, cx, cy, 0, 0 "
                            f"and the 3x4 world-to-camera matrix): {shown!r}")
    if not all(math.isfinite(v) for v in values):
        raise PoseFileError(f"line {n} holds a number that is not finite: {shown!r}")
    if values[1] <= 0 or values[2] <= 0:
        raise PoseFileError(f"line {n}: the focal lengths fx = {values[1]}, fy = {values[2]} must be > 0")
    if abs(_det3([values[7:10], values[11:14], values[15:18]])) < 1e-8:
        raise PoseFileError(f"line {n}: the rotation of its world-to-camera matrix is singular, so the "
                            "camera cannot be placed")
    return values


def _det3(m: Sequence[Sequence[float]]) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def camera_problems(values: Mapping[str, Any], origins: Mapping[str, str], where: Callable[[str], str]) -> list[str]:
    """A pose file that cannot be read as poses for every frame, or set beside a direction or speed."""
    path = values.get(POSE_KEY)
    if path is None:
        return []
    shown = f'[inputs.camera].pose_file = "{display_path(path)}"'
    found = [f"{where(key)}: [inputs.camera].{key.rsplit('.', 1)[1]} is set beside {shown}, which gives "
             "every pose itself; remove one of the two" for key in DIRECTION_KEYS
             if origins.get(key, "default") not in ("default", "family")]
    if Path(path).is_file():
        try:
            read_pose_file(Path(path), values["video.frames"])
        except PoseFileError as exc:
            found.append(f"{where(POSE_KEY)}: {shown}: {exc} (CameraCtrl's format: a header line, then "
                         f"per frame: frame fx fy cx cy 0 0 and the 3x4 world-to-camera matrix by rows)")
    return found
