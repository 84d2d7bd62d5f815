"""Checks on model files at planning time, before any weight is read: is this DiT the family's?

Planning runs on every invocation, a fully cached one included, so these checks read only the
safetensors headers, in plain Python: a cached rerun never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wanflow.errors import ModelLoadError
from wanflow.memory.sizes import read_headers


def check_dit(files: Sequence[Path], architecture: str, component: str) -> None:
    """Refuse a DiT whose key/shape signature is another variant than the family's, naming both."""
    from wanflow.models.signature import architecture_mismatch, identify

    shards = [Path(f) for f in files if Path(f).suffix == ".safetensors"]
    if not shards:
        return  # .pth weights: the loader checks them when it runs
    why = architecture_mismatch(architecture, identify(read_headers(shards)))
    if why is not None:  # None too for a plugin's architecture: its own loader checks it
        names = ", ".join(str(s) for s in shards[:3]) + (" …" if len(shards) > 3 else "")
        raise ModelLoadError(
            f"[models.{component}] {names}: this family {why}; point [models.{component}] at the right "
            "checkpoint or pick the family that matches it")
