"""Run archives: built in a hidden folder beside the target, marked complete, then renamed.

An archive is self-contained: every input file the recipe names (images, videos, LoRAs) is stored
in it by content as ``inputs/<sha256><suffix>``, and its ``resolved.toml`` names them by that
path relative to the archive, so it reproduces after being moved, tarred or imported elsewhere.
Model weights are not copied (they are tens of GB); the lock records their digests and commit.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import tomlkit

from wanflow.engine.keys import digest_file
from wanflow.errors import ArchiveError

#: The newest archive layout this wanflow reads and the one it writes.
ARCHIVE_SCHEMA = 1
REQUIRED_FILES = ("recipe.toml", "resolved.toml", "lock.toml")
COMPLETE_MARK = "COMPLETE"
INCOMPLETE_PREFIX = ".incomplete-"
INPUTS_DIR = "inputs"
#: Recipe file settings that are model weights: recorded in the lock's weights table, not copied.
WEIGHT_KEYS = ("models.",)
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")

Digest = Callable[[Path], str]


def utc_stamp() -> str:
    """A sortable UTC timestamp for folder names."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def safe_relpath(rel: str, what: str = "path") -> PurePosixPath:
    """A relative path that stays inside its folder; anything else is refused."""
    p = PurePosixPath(str(rel).replace("\\", "/"))
    if not rel or p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise ArchiveError(f"unsafe {what} {rel!r} in archive: only relative paths inside the "
                           "archive are allowed (no absolute paths, no `..`)")
    return p


def safe_join(root: Path, rel: str, what: str = "path") -> Path:
    """``root / rel``, refusing anything that would land outside ``root``."""
    target = (root / safe_relpath(rel, what)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ArchiveError(f"unsafe {what} {rel!r}: it resolves outside {root}")
    return target


@attrs.frozen
class ArchivedInput:
    """One input file of a run as the archive holds it."""

    rel: str  # "inputs/<sha256>.png", relative to the archive
    sha256: str  # of the file, or of the folder's listing of (path, file digest)
    name: str  # the file's own name where the run found it, for people reading the lock


def is_archived_input(key: str) -> bool:
    """Input files are archived; weight files (``[models.X].source``) are only recorded."""
    return not key.startswith(WEIGHT_KEYS)


def content_digest(path: Path, digest: Digest) -> str:
    """A file's digest; for a folder, the digest of its sorted (relative path, file digest) list."""
    path = Path(path)
    if not path.is_dir():
        return digest(path)
    listing = "".join(f"{f.relative_to(path).as_posix()}\0{digest(f)}\n"
                      for f in sorted(path.rglob("*")) if f.is_file())
    return hashlib.sha256(listing.encode()).hexdigest()


def archived_rel(sha256: str, source: Path) -> str:
    """``inputs/<sha256><suffix>``: by content, with the suffix that tells readers the format."""
    suffix = source.suffix.lower() if _SUFFIX.fullmatch(source.suffix) and not source.is_dir() else ""
    return f"{INPUTS_DIR}/{sha256}{suffix}"


def portable_resolved(text: str, stored: Mapping[str, ArchivedInput]) -> str:
    """``resolved.toml`` with each input file's path replaced by its path inside the archive."""
    doc = tomlkit.parse(text)
    for key, item in stored.items():
        *heads, last = key.split(".")
        node: Any = doc
        for part in heads:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = item.rel
    return tomlkit.dumps(doc)


class ArchiveWriter:
    """Collects one run's files; nothing looks complete until :meth:`finish` renames it."""

    def __init__(self, runs_dir: Path, name: str):
        safe_relpath(name, "recipe name")
        self.parent = Path(runs_dir) / name
        self.stamp = utc_stamp()
        self.tmp = self.parent / f"{INCOMPLETE_PREFIX}{self.stamp}-{os.getpid()}"
        self.tmp.mkdir(parents=True)

    def write_text(self, rel: str, text: str) -> None:
        safe_join(self.tmp, rel).write_text(text, encoding="utf-8")

    def add_inputs(self, files: Mapping[str, Path], digest: Digest) -> dict[str, ArchivedInput]:
        """Copy every input file (not weights) into ``inputs/``, once per content; checked after copying."""
        stored = {}
        for key, path in sorted(files.items()):
            if is_archived_input(key):
                path = Path(path)
                sha = content_digest(path, digest)
                stored[key] = ArchivedInput(archived_rel(sha, path), sha, path.name)
                self._copy_in(key, path, stored[key])
        return stored

    def _copy_in(self, key: str, source: Path, item: ArchivedInput) -> None:
        target = safe_join(self.tmp, item.rel, "input")
        if target.exists():
            return  # the same content under two keys
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        if content_digest(target, digest_file) != item.sha256:
            raise ArchiveError(f"{key} = {source} changed while it was being copied into the run archive; "
                               "leave input files alone while a run starts, and run again")

    def add_output(self, rel: str, data: bytes) -> None:
        target = safe_join(self.tmp, f"outputs/{rel}", "output name")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def finish(self, key8: str, lock: Mapping[str, Any]) -> Path:
        """Write the lock, mark complete, then move into place in one rename."""
        self.write_text("lock.toml", tomlkit.dumps(_plain(lock)))
        mark = self.tmp / COMPLETE_MARK
        with open(mark, "w", encoding="utf-8") as f:
            f.write(self.stamp + "\n")
            f.flush()
            os.fsync(f.fileno())
        final = self.parent / f"{self.stamp}-{key8}"
        os.replace(self.tmp, final)
        return final


def _plain(value: Any) -> Any:
    """Drop Nones (TOML has no null) and turn paths into strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value if v is not None]
    return str(value) if isinstance(value, os.PathLike) else value


@attrs.frozen
class Archive:
    """A complete run archive, read and checked."""

    path: Path
    lock: Mapping[str, Any]
    recipe_text: str
    resolved_text: str

    def outputs(self) -> dict[str, Path]:
        """Output name → file, each checked to lie inside the archive."""
        names = self.lock.get("outputs", {})
        return {n: safe_join(self.path / "outputs", n, "output name") for n in names}

    def inputs(self) -> dict[str, tuple[Path, str]]:
        """Input key → (its file, the digest the run used); archives of older wanflows name the
        file where it was, by absolute path."""
        out = {}
        for key, entry in self.lock.get("inputs", {}).items():
            where = str(entry.get("path", ""))
            path = Path(where) if Path(where).is_absolute() else safe_join(self.path, where, "input path")
            out[key] = (path, str(entry.get("sha256", "")))
        return out


def input_problems(arc: Archive) -> list[str]:
    """Every input of the archive that is missing or not what the run used, one line each."""
    problems = []
    for key, (path, want) in sorted(arc.inputs().items()):
        root = arc.path.resolve()
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        if not path.exists():
            problems.append(f"input {key}: {shown} is missing (the run used sha256 {want[:16]}…)")
            continue
        got = content_digest(path, digest_file)
        if got != want:
            problems.append(f"input {key}: {shown} has sha256 {got[:16]}…, the run used {want[:16]}…: "
                            "the file was changed")
    return problems


def open_archive(path: Path) -> Archive:
    """Read an archive, refusing a missing, incomplete, unknown or newer-schema one."""
    path = Path(path)
    if not path.is_dir():
        raise ArchiveError(f"run archive {path} does not exist (or is not a folder): "
                           "list archives with `wanflow runs`")
    missing = [f for f in (*REQUIRED_FILES, COMPLETE_MARK) if not (path / f).is_file()]
    if missing:
        raise ArchiveError(f"{path} is not a complete run archive: missing {', '.join(missing)} "
                           "(an interrupted run, or not an archive)")
    try:
        lock = tomlkit.parse((path / "lock.toml").read_text(encoding="utf-8")).unwrap()
    except Exception as exc:  # tomlkit raises several parse error types
        raise ArchiveError(f"{path / 'lock.toml'} is not valid TOML: {exc}") from exc
    schema = lock.get("schema")
    if not isinstance(schema, int):
        raise ArchiveError(f"{path / 'lock.toml'} has no integer `schema`: unknown archive layout")
    if schema > ARCHIVE_SCHEMA:
        raise ArchiveError(f"{path} was written by a newer wanflow (archive schema {schema} > "
                           f"{ARCHIVE_SCHEMA}): upgrade wanflow to read it")
    arc = Archive(path, lock, (path / "recipe.toml").read_text(encoding="utf-8"),
                  (path / "resolved.toml").read_text(encoding="utf-8"))
    arc.outputs()  # refuse unsafe output and input names early
    arc.inputs()
    return arc


@attrs.frozen
class RunInfo:
    """One entry of `wanflow runs`."""

    name: str
    path: Path
    complete: bool


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every archive under a runs folder, incomplete ones included and marked as such."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = []
    for recipe_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        for run in sorted(p for p in recipe_dir.iterdir() if p.is_dir()):
            complete = (not run.name.startswith(INCOMPLETE_PREFIX)
                        and (run / COMPLETE_MARK).is_file())
            found.append(RunInfo(recipe_dir.name, run, complete))
    return found


def import_archive(source: Path, runs_dir: Path) -> Path:
    """Copy an archive (folder or tar) into ``runs_dir``; members may not escape the target."""
    source = Path(source)
    if not source.exists():
        raise ArchiveError(f"archive {source} does not exist")
    staging = Path(runs_dir) / f"{INCOMPLETE_PREFIX}import-{utc_stamp()}-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        _extract(source, staging)
        root = _single_root(staging)
        arc = open_archive(root)
        problems = input_problems(arc)
        if problems:
            raise ArchiveError(f"{source} is not whole: " + "; ".join(problems)
                               + "; ask for the archive again (its inputs travel inside it)")
        name = str(arc.lock.get("name") or "imported")
        stem = root.name if root != staging else source.name.split(".")[0]  # the run's own folder name
        target = Path(runs_dir) / safe_relpath(name, "recipe name") / safe_relpath(stem, "archive name")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise ArchiveError(f"{target} already exists: remove it or rename the archive")
        os.replace(root, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _single_root(staging: Path) -> Path:
    """The archive folder inside an extraction: itself, or its one top-level folder."""
    entries = list(staging.iterdir())
    if not (staging / "lock.toml").exists() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return staging


def _extract(source: Path, dest: Path) -> None:
    """Copy files from a folder or tar, checking every member's path first."""
    if source.is_dir():
        for f in sorted(source.rglob("*")):
            rel = f.relative_to(source).as_posix()
            if f.is_symlink():
                raise ArchiveError(f"archive member {rel!r} is a link: links are not allowed")
            if f.is_file():
                target = safe_join(dest, rel, "archive member")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
        return
    with tarfile.open(source) as tar:
        members = tar.getmembers()
        for m in members:
            safe_join(dest, m.name, "archive member")
            if not (m.isfile() or m.isdir()):
                raise ArchiveError(f"archive member {m.name!r} is not a plain file or folder")
        tar.extractall(dest, members=members, filter="data")
