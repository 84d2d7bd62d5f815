"""The cache root: object store, index, weight memo and locks, with stats, gc, verify, clear."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import attrs
import structlog

from wanflow.engine.index import Index, WeightMemo
from wanflow.engine.store import ObjectStore
from wanflow.errors import EngineError

log = structlog.get_logger(__name__)

#: Default size limit of the object store; runs evict least-recently-used objects beyond it.
DEFAULT_MAX_BYTES = 100 * 2**30


def default_root() -> Path:
    """``WANFLOW_CACHE`` if set, else the platform's user cache dir."""
    env = os.environ.get("WANFLOW_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("wanflow"))


def parse_size(text: str) -> int:
    """``"500M"``, ``"20G"``, ``"1024"`` → bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise EngineError(f"--max-size {text!r} is not a size: write e.g. 500M, 20G or 1024") from None


@attrs.frozen
class VerifyReport:
    """What `cache verify` found: objects checked, and the digests that were corrupt (removed)."""

    checked: int
    corrupt: tuple[str, ...]
    dangling_keys: int


class Cache:
    """One cache root shared safely by concurrent runs."""

    def __init__(self, root: Path | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_root()
        _ensure_writable(self.root)
        env_max = os.environ.get("WANFLOW_CACHE_MAX_SIZE")
        self.max_bytes = max_bytes or (parse_size(env_max) if env_max else DEFAULT_MAX_BYTES)
        self.store = ObjectStore(self.root)
        self.index = Index(self.root / "index")
        self.memo = WeightMemo(self.root / "weights")
        self.locks = self.root / "locks"

    def close(self) -> None:
        """Release the index handles."""
        self.index.close()
        self.memo.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int | str]:
        """Object count and bytes, step keys and the limit."""
        sizes = [p.stat().st_size for _, p in self.store.iter_objects()]
        keys = sum(1 for _ in self.index.items("key"))
        return {"root": str(self.root), "objects": len(sizes), "bytes": sum(sizes),
                "keys": keys, "max_bytes": self.max_bytes}

    def gc(self, max_bytes: int | None = None) -> int:
        """Evict least-recently-used objects until the store fits; returns bytes freed."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        objs = [(d, p, p.stat()) for d, p in self.store.iter_objects()]
        total = sum(st.st_size for _, _, st in objs)
        objs.sort(key=lambda o: self.index.last_used(o[0]) or o[2].st_mtime)
        freed = 0
        for digest, _, st in objs:
            if total - freed <= limit:
                break
            self.store.drop(digest)
            self.index.delete_raw(f"used:{digest}")
            freed += st.st_size
        self.store.clear_stale_tmp()
        if freed:
            log.info("cache.gc", freed_bytes=freed, limit=limit)
        return freed

    def verify(self) -> VerifyReport:
        """Re-hash every object; corrupt ones are removed so that runs recompute them."""
        from wanflow.engine.keys import digest_file

        corrupt, checked = [], 0
        for digest, path in self.store.iter_objects():
            checked += 1
            if digest_file(path) != digest:
                log.warning("cache.corrupt", object=digest[:12], path=str(path))
                self.store.drop(digest)
                corrupt.append(digest)
        dangling = 0
        for key, entry in list(self.index.items("key")):
            if not self.store.has(entry["digest"]):
                self.index.forget(key)
                dangling += 1
        return VerifyReport(checked, tuple(corrupt), dangling)

    def clear(self) -> None:
        """Remove every object, index entry and remembered weight digest."""
        shutil.rmtree(self.store.objects, ignore_errors=True)
        shutil.rmtree(self.store.tmp, ignore_errors=True)
        self.index.clear()
        self.memo.clear()


def _ensure_writable(root: Path) -> None:
    """Fail before any work when the cache root cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise EngineError(
            f"cache root {root} is not writable ({exc.strerror}): "
            "set WANFLOW_CACHE to a writable directory"
        ) from exc
