"""Canonical JSON, the one hash function, and the execution-policy fields that keys ignore.

sha256 (hashlib) rather than BLAKE3: it is in the standard library (no extra dependency),
hardware-accelerated on current CPUs, and it is the digest the model hubs publish for their
files, so the digests in a run's lock can be checked against ModelScope/Hugging Face directly.
Big weight files are hashed once and remembered (see ``index.WeightMemo``), so BLAKE3's extra
speed would buy little.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

from wanflow.errors import EngineError

#: Resolved fields that cannot change the numbers a step produces: where weights are placed
#: (offload, streaming, the VRAM budget), how progress is shown and how logs are formatted.
#: Patterns match dotted keys (``fnmatch``). Everything else, dtype, fp8 storage, attention
#: kernel, VAE tiling, noise device, TeaCache threshold, is part of the keys.
EXCLUDED_POLICY_FIELDS: tuple[str, ...] = (
    "memory.policy",
    "memory.limit_gb",
    "memory.host_limit_gb",
    "memory.placement",
    "memory.offload",
    "memory.stream",
    "progress.*",
    "log.*",
    "logging.*",
    "output.dir",
    "runs.dir",
)

HASH_NAME = "sha256"
_CHUNK = 8 << 20


def is_policy_field(dotted_key: str) -> bool:
    """True when a resolved field only changes how a run executes, never its numbers."""
    return any(fnmatch.fnmatchcase(dotted_key, pat) for pat in EXCLUDED_POLICY_FIELDS)


def digest_bytes(data: bytes) -> str:
    """The hex digest the store and the keys use for a blob."""
    return hashlib.sha256(data).hexdigest()


def digest_file(path: Path) -> str:
    """Hash a file in chunks so that multi-GB checkpoints never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _normalise(obj: Any, path_digest: Callable[[Path], str] | None) -> Any:
    """Map a value onto plain JSON types so that equal meanings give equal text."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise EngineError(f"cannot key a non-finite number {obj!r}: use a finite value")
        return 0.0 if obj == 0 else obj  # -0.0 and 0.0 mean the same setting
    if isinstance(obj, enum.Enum):
        return _normalise(obj.value, path_digest)
    if isinstance(obj, PurePath):
        if path_digest is None:
            return str(obj)
        return {"sha256": path_digest(Path(obj))}
    if isinstance(obj, Mapping):
        return {str(k): _normalise(v, path_digest) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normalise(v, path_digest) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_normalise(v, path_digest) for v in obj)
    raise EngineError(f"cannot key a value of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any, path_digest: Callable[[Path], str] | None = None) -> str:
    """One text per meaning: sorted keys, no spaces, tuples as lists, paths as content digests."""
    norm = _normalise(obj, path_digest)
    return json.dumps(norm, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_of(fingerprint: Mapping[str, Any]) -> str:
    """The cache key of a step: the hash of its canonical fingerprint."""
    return digest_bytes(canonical_json(fingerprint).encode())
