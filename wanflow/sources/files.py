"""Finding a component's files inside a source root and telling a complete file from a partial one.

A partial download must never be loaded: a shard named in the index but absent, an empty file, a
safetensors file shorter than its header says, a torch zip checkpoint cut before its directory,
or a JSON file cut mid-way are all reported, by their path and what is wrong.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

import attrs

INDEX_SUFFIX = ".index.json"  # "diffusion_pytorch_model.safetensors.index.json"
_SHARD = re.compile(r"(.+)-(\d{5})-of-(\d{5})\.safetensors")


@attrs.frozen
class Match:
    """The files found for a component, and what is missing or broken (relative paths)."""

    files: tuple[Path, ...]
    missing: tuple[str, ...]  # patterns or shard names with no file
    broken: tuple[tuple[str, str], ...]  # (relative path, what is wrong)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.broken


def is_optional(pattern: str) -> bool:
    """An index json exists only in sharded repositories (Wan2.1-T2V-1.3B has one file, no index)."""
    return pattern.endswith(INDEX_SUFFIX)


def glob_files(root: Path, pattern: str) -> list[Path]:
    """Files matching a pattern relative to ``root``; a matched folder contributes all its files."""
    pattern = pattern + "**/*" if pattern.endswith("/") else pattern
    out: list[Path] = []
    for hit in sorted(root.glob(pattern)):
        if hit.is_dir():
            out.extend(sorted(p for p in hit.rglob("*") if p.is_file() and not _hidden(p, root)))
        elif hit.is_file() and not _hidden(hit, root):
            out.append(hit)
    return out


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def match(root: Path, patterns: tuple[str, ...] | list[str]) -> Match:
    """Every file of ``patterns`` under ``root`` in pattern order, and what is missing or broken."""
    files: list[Path] = []
    missing: list[str] = []
    for pattern in patterns:
        found = glob_files(root, pattern) if root.is_dir() else []
        if not found and not is_optional(pattern):
            missing.append(pattern)
        files.extend(f for f in found if f not in files)
    missing += _missing_shards(root, files)
    broken = [(rel(f, root), why) for f in files if (why := file_problem(f))]
    broken += short_shards(root, files) if not broken and not missing else []
    return Match(tuple(files), tuple(missing), tuple(broken))


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _missing_shards(root: Path, files: list[Path]) -> list[str]:
    """Shards a set implies (``-0000i-of-0000N``) or its index names, that are not among ``files``."""
    names = {rel(f, root) for f in files}
    expected: set[str] = set()
    for name in names:
        if (m := _SHARD.fullmatch(name)) is not None:
            expected |= {f"{m[1]}-{i:05d}-of-{m[3]}.safetensors" for i in range(1, int(m[3]) + 1)}
        elif name.endswith(INDEX_SUFFIX):
            folder = name.rpartition("/")[0]
            expected |= {f"{folder}/{s}" if folder else s for s in read_index(root / name)[0]}
    return sorted(expected - names)


def read_index(index: Path) -> tuple[list[str], int]:
    """(shard names, beside the index, and total tensor bytes) of a sharded checkpoint's index."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
        weight_map, total = data.get("weight_map", {}), int(data.get("metadata", {}).get("total_size", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return [], 0  # reported by file_problem
    names = sorted({str(v) for v in weight_map.values()}) if isinstance(weight_map, dict) else []
    return names, total


def short_shards(root: Path, files: list[Path]) -> list[tuple[str, str]]:
    """Indexes whose shards together hold fewer bytes than the index's ``total_size``."""
    out = []
    for index in (f for f in files if f.name.endswith(INDEX_SUFFIX)):
        shards, total = read_index(index)
        paths = [index.parent / s for s in shards]
        if paths and all(p.is_file() for p in paths):
            have = sum(p.stat().st_size for p in paths)
            if have < total:
                out.append((rel(index, root), f"lists shards of {total} bytes but they hold {have}"))
    return out


def file_problem(path: Path) -> str | None:
    """Why a file cannot be a complete download, or None when it looks whole."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "is empty (0 bytes)"
        if path.suffix == ".safetensors":
            return _safetensors_problem(path, size)
        if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            return _torch_zip_problem(path)
        if path.suffix == ".json":
            return _json_problem(path, size)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"is {size} bytes, too short for a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"is {size} bytes but its header alone needs {8 + n}: an interrupted download"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "has a corrupt safetensors header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    need = 8 + n + max(ends, default=0)
    return None if size >= need else f"is {size} bytes but its header says {need}: an interrupted download"


def _torch_zip_problem(path: Path) -> str | None:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04" or zipfile.is_zipfile(path):
        return None  # a whole torch zip checkpoint, or the legacy pickle format (not checkable)
    return "is a torch zip checkpoint cut before its end (no zip directory): an interrupted download"


def _json_problem(path: Path, size: int) -> str | None:
    with path.open("rb") as fh:
        fh.seek(max(0, size - 64))
        tail = fh.read().rstrip()
    return None if tail.endswith((b"}", b"]")) else "is a JSON file cut before its end: an interrupted download"
