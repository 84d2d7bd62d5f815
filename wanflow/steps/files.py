"""Checks on model files at planning time, before any weight is read: is this DiT the family's?"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import attrs

from wanflow.errors import ModelLoadError

#: Family DiT architecture -> the variant ``wanflow.models.signature.identify`` reports for it.
DIT_VARIANTS = {
    "wan2.1-t2v-1.3b": "wan2.1-t2v", "wan2.1-t2v-14b": "wan2.1-t2v", "wan2.1-i2v-14b": "wan2.1-i2v",
    "wan2.1-flf2v-14b": "wan2.1-flf2v", "wan2.2-t2v-a14b": "wan2.1-t2v", "wan2.2-i2v-a14b": "wan2.2-i2v",
    "wan2.2-ti2v-5b": "wan2.2-ti2v", "wanflow-tiny-dit": "wan2.1-t2v",
}


@attrs.frozen
class _Shape:
    """A tensor as far as the signature needs it: its shape (read from a safetensors header)."""

    shape: tuple[int, ...]


def header_shapes(path: Path) -> dict[str, _Shape]:
    """Tensor shapes from a safetensors header alone (no tensor data is read)."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError) as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err}); download it again") from None
    return {k: _Shape(tuple(v["shape"])) for k, v in header.items() if k != "__metadata__"}


def check_dit(files: Sequence[Path], architecture: str, component: str) -> None:
    """Refuse a DiT whose key/shape signature is another variant than the family's, naming both."""
    from wanflow.models.signature import identify

    expected = DIT_VARIANTS.get(architecture)
    shards = [Path(f) for f in files if Path(f).suffix == ".safetensors"]
    if expected is None or not shards:
        return  # a plugin's architecture, or .pth weights: the loader checks them when it runs
    state: dict[str, _Shape] = {}
    for shard in shards:
        state.update(header_shapes(shard))
    found = identify(state)  # type: ignore[arg-type]
    if found.kind != "dit" or found.variant != expected:
        names = ", ".join(str(s) for s in shards[:3]) + (" …" if len(shards) > 3 else "")
        raise ModelLoadError(
            f"[models.{component}] {names}: this family needs a {expected} DiT, but the file looks like "
            f"{found.describe()}; point [models.{component}] at the right checkpoint or pick the family "
            "that matches it")
