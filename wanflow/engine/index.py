"""The key → object index and the weight-digest memo, both in diskcache (safe across processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import diskcache

from wanflow.engine.keys import digest_file


@attrs.frozen
class Entry:
    """What a step key produced: the object holding its output and how it was made."""

    digest: str
    output: str  # "tensors" | "bytes"
    node: str
    kind: str
    size: int
    duration_s: float


class Index:
    """Step key → output object; last fingerprints per node (for explain); partial states."""

    def __init__(self, directory: Path):
        self._db = diskcache.Cache(str(directory), eviction_policy="none", size_limit=2**62)

    def close(self) -> None:
        """Release the sqlite handle."""
        self._db.close()

    def get(self, key: str) -> Entry | None:
        """The entry of a key, or None when it was never computed."""
        raw = self._db.get(f"key:{key}")
        return Entry(**raw) if raw else None

    def put(self, key: str, entry: Entry) -> None:
        """Record that a key produced an object."""
        self._db.set(f"key:{key}", attrs.asdict(entry))
        self.touch(entry.digest)

    def forget(self, key: str) -> None:
        """Drop a key whose object is gone or corrupt."""
        self._db.delete(f"key:{key}")

    def touch(self, digest: str) -> None:
        """Remember when an object was last used (for LRU eviction)."""
        self._db.set(f"used:{digest}", time.time())

    def last_used(self, digest: str) -> float | None:
        """When an object was last used, if known."""
        return self._db.get(f"used:{digest}")

    def set_last(self, scope: str, node: str, fingerprint: Mapping[str, Any]) -> None:
        """Remember the fingerprint a node had the last time this recipe ran it."""
        self._db.set(f"last:{scope}:{node}", dict(fingerprint))

    def last(self, scope: str, node: str) -> dict[str, Any] | None:
        """The fingerprint a node had the last time this recipe ran it."""
        return self._db.get(f"last:{scope}:{node}")

    def set_partial(self, key: str, done: int, digest: str, output: str) -> None:
        """Point a key at the saved partial state of its long step."""
        self._db.set(f"partial:{key}", {"done": done, "digest": digest, "output": output})

    def partial(self, key: str) -> dict[str, Any] | None:
        """The saved partial state of a key's long step, if any."""
        return self._db.get(f"partial:{key}")

    def clear_partial(self, key: str) -> None:
        """Forget a partial state once the step has finished."""
        self._db.delete(f"partial:{key}")

    def items(self, prefix: str) -> Iterator[tuple[str, Any]]:
        """Every (suffix, value) whose key starts with ``prefix:``."""
        head = f"{prefix}:"
        for k in list(self._db.iterkeys()):
            if isinstance(k, str) and k.startswith(head):
                value = self._db.get(k)
                if value is not None:
                    yield k[len(head) :], value

    def delete_raw(self, key: str) -> None:
        """Delete any index record by its full key."""
        self._db.delete(key)

    def clear(self) -> None:
        """Forget everything."""
        self._db.clear()


class WeightMemo:
    """(path, size, mtime_ns, inode) → sha256, so a 28 GB checkpoint is hashed once."""

    def __init__(self, directory: Path):
        self._db = diskcache.Cache(str(directory), eviction_policy="none", size_limit=2**62)

    def close(self) -> None:
        """Release the sqlite handle."""
        self._db.close()

    def digest(self, path: Path) -> str:
        """The file's digest, from the memo when the file has not changed since it was hashed."""
        st = os.stat(path)
        memo_key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        found = self._db.get(memo_key)
        if found is None:
            found = digest_file(Path(path))
            self._db.set(memo_key, found)
        return found

    def clear(self) -> None:
        """Forget every remembered digest."""
        self._db.clear()
