"""Content-addressed objects: ``objects/ab/cdef…``, written atomically, verified on every read."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from wanflow.engine.keys import digest_bytes
from wanflow.errors import EngineError

log = structlog.get_logger(__name__)


class CorruptObject(EngineError):
    """An object's bytes no longer match its digest (it is dropped and recomputed)."""


def tensors_to_bytes(tensors: dict[str, Any]) -> bytes:
    """Serialise named tensors as safetensors (torch is imported only here)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def bytes_to_tensors(data: bytes) -> dict[str, Any]:
    """Read named tensors back from safetensors bytes."""
    from safetensors.torch import load

    return load(data)


class ObjectStore:
    """Blobs named by their sha256; a blob, once written, is never rewritten."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"

    def path(self, digest: str) -> Path:
        """Where an object lives: two-character fan-out keeps directories small."""
        return self.objects / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        """True when the object file exists (its content is checked when read)."""
        return self.path(digest).is_file()

    def put(self, data: bytes) -> str:
        """Store a blob; a blob already present is left as it is."""
        digest = digest_bytes(data)
        target = self.path(digest)
        if target.is_file():
            return digest
        self._write_atomic(target, data)
        return digest

    def _write_atomic(self, target: Path, data: bytes) -> None:
        """Temp file, fsync, rename: a crash leaves either nothing or the whole object."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=f"{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise EngineError(
                    f"disk full while writing an object to {self.root}: free some space, "
                    "run `wanflow cache gc --max-size SIZE`, or point WANFLOW_CACHE elsewhere"
                ) from exc
            raise

    def get(self, digest: str) -> bytes:
        """Read an object, refusing it when its bytes do not match its name."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise CorruptObject(f"object {digest[:12]} is missing from {self.objects}") from exc
        if digest_bytes(data) != digest:
            raise CorruptObject(f"object {digest[:12]} is corrupt (content does not match)")
        return data

    def drop(self, digest: str) -> None:
        """Remove an object (corrupt, or evicted)."""
        self.path(digest).unlink(missing_ok=True)

    def copy_to(self, digest: str, dest: Path) -> None:
        """Copy a verified object out of the store (for run archives)."""
        data = self.get(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def iter_objects(self) -> Iterator[tuple[str, Path]]:
        """Every object on disk as (digest, path)."""
        if not self.objects.is_dir():
            return
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    yield sub.name + f.name, f

    def clear_stale_tmp(self) -> int:
        """Remove temp files left by writers that died (their pid prefix is not alive)."""
        removed = 0
        if not self.tmp.is_dir():
            return 0
        for f in self.tmp.iterdir():
            pid = f.name.split("-", 1)[0]
            if not pid.isdigit() or not _alive(int(pid)):
                f.unlink(missing_ok=True) if f.is_file() else shutil.rmtree(f, True)
                removed += 1
        return removed


def _alive(pid: int) -> bool:
    """True when a process with this pid exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
