"""safetensors bytes that depend only on their content.

The safetensors writer keeps the header's ``__metadata__`` in a hash map whose order changes from
process to process, so the same tensors and metadata written twice can differ in their bytes:
a file exported again on another run (or machine) would look changed to anything comparing
digests. Here the metadata entries are put in sorted order; the header keeps its length (the
same characters, reordered), so the tensor data offsets stay valid.
"""

from __future__ import annotations

import json
import struct


def sorted_metadata(data: bytes) -> bytes:
    """``data`` (a whole safetensors file) with its metadata entries in sorted order."""
    (length,) = struct.unpack("<Q", data[:8])
    raw = data[8:8 + length]
    header = json.loads(raw)
    meta = header.get("__metadata__")
    if not meta:
        return data
    header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > length:  # escapes written differently: keep the file as it is
        return data
    return data[:8] + text + b" " * (length - len(text)) + data[8 + length:]


def save_stable(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save`` with sorted metadata."""
    from safetensors.torch import save

    return sorted_metadata(save(tensors, metadata=metadata))
