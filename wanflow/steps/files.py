"""Checks on model files at planning time, before any weight is read: is this DiT the family's?

Planning runs on every invocation, a fully cached one included, so these checks read only the
safetensors headers, in plain Python: a cached rerun never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wanflow.errors import ModelLoadError
from wanflow.memory.sizes import read_headers

#: Family DiT architecture -> the variant ``wanflow.models.signature.identify`` reports for it.
DIT_VARIANTS = {
    "wan2.1-t2v-1.3b": "wan2.1-t2v", "wan2.1-t2v-14b": "wan2.1-t2v", "wan2.1-i2v-14b": "wan2.1-i2v",
    "wan2.1-flf2v-14b": "wan2.1-flf2v", "wan2.2-t2v-a14b": "wan2.1-t2v", "wan2.2-i2v-a14b": "wan2.2-i2v",
    "wan2.2-ti2v-5b": "wan2.2-ti2v", "wanflow-tiny-dit": "wan2.1-t2v",
}


def check_dit(files: Sequence[Path], architecture: str, component: str) -> None:
    """Refuse a DiT whose key/shape signature is another variant than the family's, naming both."""
    from wanflow.models.signature import identify

    expected = DIT_VARIANTS.get(architecture)
    shards = [Path(f) for f in files if Path(f).suffix == ".safetensors"]
    if expected is None or not shards:
        return  # a plugin's architecture, or .pth weights: the loader checks them when it runs
    found = identify(read_headers(shards))
    if found.kind != "dit" or found.variant != expected:
        names = ", ".join(str(s) for s in shards[:3]) + (" …" if len(shards) > 3 else "")
        raise ModelLoadError(
            f"[models.{component}] {names}: this family needs a {expected} DiT, but the file looks like "
            f"{found.describe()}; point [models.{component}] at the right checkpoint or pick the family "
            "that matches it")
