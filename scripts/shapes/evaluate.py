"""Grade a folder of videos against what each was meant to show: per-attribute and overall accuracy.

The labels table is a CSV with a ``video`` column (path relative to the table's folder, or
absolute) and either ``colour``, ``shape`` and ``motion`` columns or a ``prompt`` column whose
words name them (read by ``captions.parse``). The dataset's ``labels.csv`` is such a table, and
so is a hand-written one listing a run archive's videos with the prompts they were made from.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np

from .captions import parse
from .classify import Classification, classify
from .vocabulary import Combo

ATTRIBUTES = ("colour", "shape", "motion")


class LabelsError(ValueError):
    """The labels table cannot be read as videos with intended attributes."""


@attrs.frozen
class Graded:
    """One video: what it should show and what the classifier saw."""

    video: str
    intended: Combo
    seen: Classification

    def correct(self, attribute: str) -> bool:
        return getattr(self.seen, attribute) == self.intended[ATTRIBUTES.index(attribute)]


def read_labels(path: Path) -> list[tuple[Path, Combo]]:
    """(video path, intended combination) for each row of a labels CSV."""
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file; give a CSV with columns video and "
                          "colour,shape,motion (or prompt)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if "video" not in columns or not (set(ATTRIBUTES) <= columns or "prompt" in columns):
        raise LabelsError(f"{path}: columns are {sorted(columns)}; it needs video and either "
                          "colour,shape,motion or prompt")
    out = []
    for n, row in enumerate(rows, start=2):
        try:
            combo = tuple(row[a] for a in ATTRIBUTES) if set(ATTRIBUTES) <= columns else parse(row["prompt"])
        except ValueError as exc:
            raise LabelsError(f"{path}, line {n}: {exc}") from None
        out.append((path.parent / row["video"], combo))
    return out


def grade(labels: list[tuple[Path, Combo]], read: Callable[[Path], np.ndarray]) -> list[Graded]:
    """Classify every video (frames from ``read``) against its intended combination."""
    graded = []
    for video, combo in labels:
        try:
            graded.append(Graded(str(video), combo, classify(read(video))))
        except ValueError as exc:  # e.g. a single frame: no motion to see
            raise LabelsError(f"{video}: {exc}") from None
    return graded


def accuracy(graded: list[Graded]) -> dict[str, float]:
    """Share correct per attribute, and ``overall``: all three correct. "unknown" counts as wrong."""
    if not graded:
        raise LabelsError("no videos to grade: the labels table has no rows")
    scores = {a: float(np.mean([g.correct(a) for g in graded])) for a in ATTRIBUTES}
    scores["overall"] = float(np.mean([all(g.correct(a) for a in ATTRIBUTES) for g in graded]))
    return scores


def report(graded: list[Graded]) -> str:
    """A plain-text table: accuracies, then every video with a wrong attribute and why."""
    scores = accuracy(graded)
    lines = [f"{len(graded)} videos"] + [f"{name:>8}: {value:6.1%}" for name, value in scores.items()]
    for g in graded:
        wrong = [f"{a} {g.intended[i]} → {getattr(g.seen, a)}" for i, a in enumerate(ATTRIBUTES) if not g.correct(a)]
        if wrong:
            lines.append(f"  {g.video}: {'; '.join(wrong)}" + (f" ({g.seen.reason})" if g.seen.reason else ""))
    return "\n".join(lines)
