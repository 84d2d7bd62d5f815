"""Checks on model files at planning time, before any weight is read: is this DiT the family's?

Planning runs on every invocation, a fully cached one included, so these checks read only the
safetensors headers, in plain Python: a cached rerun never imports torch.
"""

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

#: A safetensors header larger than this is not one (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 2**20


@attrs.frozen
class HeaderEntry:
    """A tensor as its file's header describes it: all that a key/shape signature reads."""

    shape: tuple[int, ...]
    dtype: str


def read_header(path: Path) -> dict[str, HeaderEntry]:
    """The tensors a safetensors file declares, from its JSON header alone (no torch, no data)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise ModelLoadError(f"{path}: not a complete safetensors file ({size} bytes; its header "
                                 "does not fit): download it again")
        raw = f.read(length)
    try:
        header = json.loads(raw)
        return {name: HeaderEntry(tuple(int(n) for n in entry["shape"]), str(entry["dtype"]))
                for name, entry in header.items() if name != "__metadata__"}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{path}: corrupt safetensors header ({err!r:.120}); download it again") from None


def check_dit(files: Sequence[Path], architecture: str, component: str) -> None:
    """Refuse a DiT whose key/shape signature is another variant than the family's, naming both."""
    from wanflow.models.signature import identify

    expected = DIT_VARIANTS.get(architecture)
    shards = [Path(f) for f in files if Path(f).suffix == ".safetensors"]
    if expected is None or not shards:
        return  # a plugin's architecture, or .pth weights: the loader checks them when it runs
    state: dict[str, HeaderEntry] = {}
    for shard in shards:
        state.update(read_header(shard))
    found = identify(state)
    if found.kind != "dit" or found.variant != expected:
        names = ", ".join(str(s) for s in shards[:3]) + (" …" if len(shards) > 3 else "")
        raise ModelLoadError(
            f"[models.{component}] {names}: this family needs a {expected} DiT, but the file looks like "
            f"{found.describe()}; point [models.{component}] at the right checkpoint or pick the family "
            "that matches it")
