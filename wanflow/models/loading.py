"""Strict loading of checkpoint tensors onto meta-initialised modules, and key renaming.

Modules are built on the meta device, so no memory is allocated and nothing is randomly
initialised before the weights arrive; loading then checks every key and shape and assigns the
tensors to the module (``assign=True``), each cast and moved on its own first
(`wanflow.models.residency`), so that no second copy of the model exists at any time. Key
tables are ordered (regex, replacement) pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import structlog
import torch
from torch import Tensor, nn

from wanflow.errors import ModelLoadError
from wanflow.models import signature
from wanflow.models.checkpoint_files import capped
from wanflow.models.dit_keys import renamed_key
from wanflow.models.residency import DtypeChoice, place_all

log = structlog.get_logger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------- keys


def rename_keys(state: Mapping[str, T], table: Sequence[tuple[str, str]]) -> dict[str, T]:
    """Apply an ordered (regex, replacement) table: first full match wins, others stay as they are."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in table]
    out: dict[str, T] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = renamed_key(key, rules)
        if new in out:
            raise ModelLoadError(f"keys {origin[new]!r} and {key!r} both become {new!r}.")
        out[new], origin[new] = value, key
    return out


# ----------------------------------------------------------------------------- modules


def require_parts(state: Mapping[str, Tensor], prefixes: Sequence[str], source: str, model: str,
                  fix: str) -> None:
    """Refuse a checkpoint of a derivative model (Animate, S2V, …) that has none of the parts its
    ``prefixes`` name (saying what the file looks like instead, then ``fix``) or only some of them
    (a missing shard, usually)."""
    names = [p.rstrip(".") for p in prefixes]
    present = [n for n, p in zip(names, prefixes, strict=True) if any(k.startswith(p) for k in state)]
    if not present:
        listed = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise ModelLoadError(f"{source}: not a {model} checkpoint: it has no {listed} tensors; it looks like "
                             f"{signature.identify(state).describe()}. {fix}")
    missing = [n for n in names if n not in present]
    if missing:
        raise ModelLoadError(
            f"{source}: an incomplete {model} checkpoint: it has {', '.join(present)} tensors but no "
            f"{', '.join(missing)} tensors. A shard is probably missing: pass the index json or the folder "
            "holding every shard.")


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module on the meta device: no memory and no random init before the weights."""
    with torch.device("meta"):
        return factory()


def load_state_into(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str, expected: str,
    dtype: DtypeChoice = None, device: torch.device | str | None = None, borrowed: bool = False,
) -> None:
    """Check every key and shape, then assign the tensors to the module.

    With ``dtype`` or ``device`` (or ``borrowed``: the tensors are the caller's), each tensor is
    first placed on its own (cast, moved, in memory of its own, see `residency.place_all`);
    without, the tensors are assigned as they are (views of a mapped file stay views).
    ``dtype`` is one dtype for every floating tensor, or a function of the key.
    """
    report = mismatch_report(module.state_dict(keep_vars=True), state)
    if report:
        looks = signature.identify(state).describe()
        raise ModelLoadError(
            f"{source}: does not fit {expected}:\n{report}\n"
            f"This file looks like {looks}, not {_article(expected)}. Point this component at "
            "the right file, or choose the model family that matches the file."
        )
    if dtype is not None or device is not None or borrowed:
        state = place_all(state, dtype, device, borrowed=borrowed)
    module.load_state_dict(state, strict=True, assign=True)
    log.debug("weights_loaded", source=source, expected=expected, tensors=len(state))


def mismatch_report(wanted: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    """Missing, unexpected and mis-shaped keys, each list capped with its count ('' if none)."""
    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    shaped = [
        f"{k}: file {tuple(given[k].shape)} vs model {tuple(wanted[k].shape)}"
        for k in wanted
        if k in given and tuple(given[k].shape) != tuple(wanted[k].shape)
    ]
    parts = [
        f"  {name} ({len(keys)}): {capped(keys)}"
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
        if keys
    ]
    return "\n".join(parts)


def _article(name: str) -> str:
    """'a Wan DiT' / 'an umT5 encoder' for an error sentence."""
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name

__all__ = ["build_on_meta", "load_state_into", "mismatch_report", "rename_keys"]
