"""Reading a training dataset's rows: CSV, JSON (a list of objects), JSONL, or a folder of media with captions.

Each reader returns every row it could read plus every problem it met (a bad JSON line, a CSV row
with too many fields, a clip without a caption), so that all of them are reported together.
Values are kept as text (JSON numbers as written); what a column means is ``wanflow.train.dataset``'s.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

import attrs

from wanflow.errors import display_path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".gif"})
METADATA_SUFFIXES = (".csv", ".json", ".jsonl")


@attrs.frozen
class Row:
    """One row: its 1-based number, where to point the user, and its non-empty values by column."""

    number: int
    where: str  # "data/metadata.csv row 3 (line 4)"
    values: Mapping[str, str]
    prompt_source: str = 'column "prompt"'  # a folder's rows name their caption file instead


@attrs.frozen
class Table:
    """Rows of one metadata file or folder, the columns they use, and what could not be read."""

    source: Path
    rows: tuple[Row, ...]
    columns: tuple[str, ...]  # in the order first seen
    problems: tuple[str, ...] = ()


def read_table(path: Path) -> Table:
    """The rows of a metadata file (by its suffix) or a media folder; raises nothing for bad rows."""
    if path.is_dir():
        return read_folder(path)
    reader = {".csv": read_csv, ".json": read_json, ".jsonl": read_jsonl}.get(path.suffix.lower())
    if reader is None:
        return _refused(path, f"{display_path(path)}: not a metadata file (it ends in "
                               f"{path.suffix or 'no suffix'}); use a .csv, .json or .jsonl file, "
                               "or a folder of media with .txt captions")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return _refused(path, f"{display_path(path)}: cannot be read as UTF-8 text ({exc}); "
                               "save it as UTF-8")
    return reader(path, text)


def _refused(path: Path, why: str) -> Table:
    """A table with no rows: the whole file is unusable, for the reason given."""
    return Table(path, (), (), (why,))


def _values(raw: Mapping) -> dict[str, str]:
    """Non-empty values as text; JSON null and empty strings mean "not given"."""
    out = {}
    for key, value in raw.items():
        if value is None or value == "":
            continue
        out[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return out


def _columns(rows: list[Row], first: list[str]) -> tuple[str, ...]:
    seen = dict.fromkeys(first)
    for row in rows:
        seen.update(dict.fromkeys(row.values))
    return tuple(seen)


def read_csv(path: Path, text: str) -> Table:
    """CSV with a header line; a row with more or fewer fields than the header is a problem."""
    name, rows, problems = display_path(path), [], []
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    for number, raw in enumerate(reader, start=1):
        where = f"{name} row {number} (line {reader.line_num})"
        if None in raw:
            problems.append(f"{where}: has {len(header) + len(raw[None])} fields but the header has "
                            f"{len(header)}; quote values that contain commas")
            continue
        if any(v is None for v in raw.values()):
            problems.append(f"{where}: has fewer fields than the header's {len(header)}; fill the row")
            continue
        rows.append(Row(number, where, _values({k: v.strip() if k != "prompt" else v for k, v in raw.items()})))
    return Table(path, tuple(rows), _columns(rows, header), tuple(problems))


def read_json(path: Path, text: str) -> Table:
    """A JSON list of objects, one per row."""
    name = display_path(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return _refused(path, f"{name}: not valid JSON ({exc}); fix it, or use one object per line "
                               "in a .jsonl file")
    if not isinstance(data, list):
        return _refused(path, f"{name}: holds a JSON {type(data).__name__}, not a list of objects; "
                               'write [{"video": ..., "prompt": ...}, ...]')
    return _object_rows(path, [(n, f"{name} row {n}", item) for n, item in enumerate(data, start=1)])


def read_jsonl(path: Path, text: str) -> Table:
    """One JSON object per line; blank lines are skipped, a line that is not an object is a problem."""
    name, items, problems = display_path(path), [], []
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for number, (line_no, line) in enumerate(lines, start=1):
        try:
            items.append((number, f"{name} row {number} (line {line_no})", json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(f"{name} row {number} (line {line_no}): not valid JSON ({exc.msg} at column "
                            f"{exc.colno}); write one object per line")
    table = _object_rows(path, items)
    return attrs.evolve(table, problems=tuple(problems) + table.problems)


def _object_rows(path: Path, items: list[tuple[int, str, object]]) -> Table:
    rows, problems = [], []
    for number, where, item in items:
        if isinstance(item, dict):
            rows.append(Row(number, where, _values(item)))
        else:
            problems.append(f"{where}: is a JSON {type(item).__name__}, not an object; "
                            'write {"video": ..., "prompt": ...}')
    return Table(path, tuple(rows), _columns(rows, []), tuple(problems))


def read_folder(path: Path) -> Table:
    """Every image and video under ``path`` (sorted), each captioned by the ``.txt`` of the same stem.

    A ``.json`` of the same stem is the clip's metadata sidecar and is left alone; any other file is
    reported, so that a clip in an unsupported format is not silently left out.
    """
    files = sorted((p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)),
                   key=lambda p: p.relative_to(path).as_posix())
    media = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
    rows = [_folder_row(n, p, path) for n, p in enumerate(media, start=1)]
    stems = {p.with_suffix("") for p in media}
    problems = [_stray(p, path, stems) for p in files if p not in media]
    return Table(path, tuple(rows), ("video", "image", "prompt"), tuple(x for x in problems if x))


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _folder_row(number: int, media: Path, root: Path) -> Row:
    caption = media.with_suffix(".txt")
    column = "image" if media.suffix.lower() in IMAGE_SUFFIXES else "video"
    values = {column: media.relative_to(root).as_posix()}
    if caption.is_file():
        values["prompt"] = caption.read_text(encoding="utf-8-sig", errors="replace")
    where = f"{display_path(root)} row {number} ({media.relative_to(root).as_posix()})"
    return Row(number, where, _values(values), prompt_source=f"caption file {display_path(caption)}")


def _stray(p: Path, root: Path, stems: set[Path]) -> str | None:
    rel = p.relative_to(root).as_posix()
    if p.suffix.lower() == ".json" and p.with_suffix("") in stems:
        return None  # the clip's metadata sidecar (wanflow writes one beside every video)
    if p.suffix.lower() == ".txt":
        if p.with_suffix("") in stems:
            return None
        return (f"{display_path(root)}: caption {rel} has no image or video of the same name; "
                "rename it to match its clip, or remove it")
    return (f"{display_path(root)}: {rel} is neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}), a video "
            f"({', '.join(sorted(VIDEO_SUFFIXES))}) nor a .txt caption; convert it or move it out of the dataset")
