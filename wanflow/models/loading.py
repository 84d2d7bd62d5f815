"""Strict loading of checkpoint tensors onto meta-initialised modules, and key renaming.

Modules are built on the meta device, so no memory is allocated and nothing is randomly
initialised before the weights arrive; loading then assigns the file's tensors (views of the
mapped file, see `wanflow.models.checkpoint_files`) to the module (``assign=True``) after
checking every key and shape. Key tables are ordered (regex, replacement) pairs.
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

log = structlog.get_logger(__name__)

T = TypeVar("T")


# ----------------------------------------------------------------------------- keys


def rename_keys(state: Mapping[str, T], table: Sequence[tuple[str, str]]) -> dict[str, T]:
    """Apply an ordered (regex, replacement) table: first full match wins, others stay as they are."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in table]
    out: dict[str, T] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = _renamed(key, rules)
        if new in out:
            raise ModelLoadError(f"keys {origin[new]!r} and {key!r} both become {new!r}.")
        out[new], origin[new] = value, key
    return out


def _renamed(key: str, rules: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """The first rule that matches the whole key renames it; no rule, no change."""
    for rx, replacement in rules:
        match = rx.fullmatch(key)
        if match:
            return match.expand(replacement)
    return key


# ----------------------------------------------------------------------------- modules


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module on the meta device: no memory and no random init before the weights."""
    with torch.device("meta"):
        return factory()


def load_state_into(
    module: nn.Module, state: Mapping[str, Tensor], *, source: str, expected: str,
    dtype: torch.dtype | None = None, device: torch.device | str | None = None,
) -> None:
    """Check every key and shape, then assign the tensors (cast/moved if asked) to the module."""
    report = mismatch_report(module.state_dict(keep_vars=True), state)
    if report:
        looks = signature.identify(state).describe()
        raise ModelLoadError(
            f"{source}: does not fit {expected}:\n{report}\n"
            f"This file looks like {looks}, not {_article(expected)}. Point this component at "
            "the right file, or choose the model family that matches the file."
        )
    if dtype is not None or device is not None:
        state = _cast_all(state, dtype, device)
    module.load_state_dict(state, strict=True, assign=True)
    log.debug("weights_loaded", source=source, expected=expected, tensors=len(state))


def _cast_all(
    state: Mapping[str, Tensor], dtype: torch.dtype | None, device: torch.device | str | None,
) -> dict[str, Tensor]:
    """Cast every tensor once: one tensor under two keys (tied weights) stays one tensor."""
    done: dict[int, Tensor] = {}
    for t in state.values():
        if id(t) not in done:
            done[id(t)] = _cast(t, dtype, device)
    return {k: done[id(t)] for k, t in state.items()}


def _cast(t: Tensor, dtype: torch.dtype | None, device: torch.device | str | None) -> Tensor:
    """Floating tensors take the compute dtype; integer/bool tensors keep theirs."""
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)


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
