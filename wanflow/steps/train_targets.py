"""LoRA target modules checked against the DiT's checkpoint header, the way peft will match them.

peft puts a LoRA on every module whose dotted name equals a target or ends with ``.`` + target, and
can wrap only layers it knows (here: Linear layers, whose ``.weight`` is 2-D). A target that matches
no Linear module of the DiT would train nothing there, and is refused before any model loads. The
header is read without torch; key names are turned into the official module names first (the
names of wanflow's DiT), since a checkpoint may be in diffusers' or ComfyUI's layout.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.errors import ModelLoadError, display_path
from wanflow.memory.sizes import TensorInfo, read_headers
from wanflow.models.dit_keys import (
    COMFYUI_PREFIX,
    DIFFUSERS_TO_OFFICIAL,
    LAYOUT_MARKERS,
    renamed_key,
)

Where = Callable[[str], str]


@attrs.frozen
class DitModules:
    """The module names of one DiT checkpoint (official spelling) and where they were read."""

    files: tuple[str, ...]
    linear: frozenset[str]  # modules holding a 2-D ``.weight``: what peft wraps
    other: frozenset[str]  # modules holding a ``.weight`` of another rank (norms, the patch conv)


def matches(module: str, target: str) -> bool:
    """peft's rule for a list of target names: the whole name, or its dotted ending."""
    return module == target or module.endswith("." + target)


def target_problems(resolved: Any, roles: Sequence[str], where: Where) -> list[str]:
    """``[train].lora_targets`` that match no Linear module of a trained DiT present on this machine."""
    t = resolved.recipe.train
    if t.method != "lora" or not t.lora_targets:
        return []
    found_modules = {role: dit_modules(resolved, role) for role in roles}
    present = {role: m for role, m in found_modules.items() if m is not None}
    found = []
    for target in dict.fromkeys(t.lora_targets):
        missing = [role for role, m in present.items() if not any(matches(n, target) for n in m.linear)]
        if missing:
            found.append(_message(target, missing, present, where))
    return found


def dit_modules(resolved: Any, role: str) -> DitModules | None:
    """The modules of the DiT ``role``, or None when its weights are not here (or not safetensors)."""
    from wanflow.sources import resolve_component

    component = resolved.family.components[role]
    override = resolved.recipe.models.get(role)
    try:
        found = resolve_component(component, (override.source, override.files) if override else None,
                                  base_dir=Path(resolved.path).parent, name=role, offline=True)
        header = read_headers(found.files)
    except (ModelLoadError, OSError):
        return None  # not downloaded (or unreadable): planning goes on; the run reports the weights
    if not header:
        return None  # .pth weights: their names are read when they load
    return modules_of(header, tuple(str(f) for f in found.files if Path(f).suffix == ".safetensors"))


def modules_of(header: Mapping[str, TensorInfo], files: tuple[str, ...] = ()) -> DitModules:
    """Linear and other weight-holding modules of a DiT header, in official names."""
    linear, other = set(), set()
    for key, info in official_names(header).items():
        if key.endswith(".weight"):
            (linear if len(info.shape) == 2 else other).add(key.removesuffix(".weight"))
    return DitModules(files, frozenset(linear), frozenset(other))


def official_names(header: Mapping[str, TensorInfo]) -> dict[str, TensorInfo]:
    """The header with its keys in the official layout (ComfyUI's prefix dropped, diffusers' renamed)."""
    if any(k.startswith(COMFYUI_PREFIX) for k in header):
        return {k.removeprefix(COMFYUI_PREFIX): v for k, v in header.items()}
    if LAYOUT_MARKERS["diffusers"] not in header:
        return dict(header)
    rules = [(re.compile(pattern), replacement) for pattern, replacement in DIFFUSERS_TO_OFFICIAL]
    return {renamed_key(k, rules): v for k, v in header.items()}


def _message(target: str, roles: Sequence[str], present: Mapping[str, DitModules], where: Where) -> str:
    mods = present[roles[0]]
    files = ", ".join(display_path(f) for f in mods.files[:2]) + (" …" if len(mods.files) > 2 else "")
    others = sorted(n for n in mods.other if matches(n, target))
    only = (f" (only {', '.join(others[:3])}{' …' if len(others) > 3 else ''}, which peft cannot wrap)"
            if others else "")
    endings = sorted({n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in mods.linear})
    close = difflib.get_close_matches(target, endings, n=1) or difflib.get_close_matches(
        target, sorted({n.rsplit(".", 1)[-1] for n in endings}), n=1)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return (f"{where('train.lora_targets')}: [train].lora_targets: \"{target}\" matches no Linear layer of the "
            f"{' and '.join(roles)} DiT ({files}){only}; a target is a module name or its dotted ending, e.g. "
            f"\"q\" (every attention's q), \"self_attn.q\" or \"ffn.0\"{hint}")
