"""Semantic difference of two recipes or archives, and the steps each change invalidates.

A step's key holds the params it reads and the digests of its weight files, so a change
invalidates the steps that read it and, for the family (``model``) or a component's source,
files or dtype (``models.X.*``), every step that runs those weights; then everything downstream.
Given the other side's specs too (both sides planned), weights are compared file by file, as
the planner keys them; without them, every step that uses the changed component counts.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.engine.explain import dotted_label, show
from wanflow.engine.keys import is_policy_field
from wanflow.engine.step import StepSpec

_MISSING = object()

#: What a ``[models.X]`` field means when the table does not set it (the schema's ``ModelSource``
#: defaults: the family's files, the run's dtype); the engine reads no schema, so they are here.
MODEL_OVERRIDE_DEFAULTS: Mapping[str, Any] = {"source": "", "dtype": "auto", "device": "auto", "files": []}


@attrs.frozen
class Change:
    """One resolved value that differs, and the steps whose keys it changes."""

    key: str
    old: Any
    new: Any
    invalidates: tuple[str, ...]


@attrs.frozen
class DiffReport:
    """Value changes, plus lock differences when both sides are archives."""

    a: str
    b: str
    changes: tuple[Change, ...]
    lock_diffs: tuple[tuple[str, Any, Any], ...] = ()


def _reads(spec: StepSpec, key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in spec.params_read)


def component_of(role: str) -> str:
    """The model component a weight role belongs to (``dit.0`` -> ``dit``, ``vae`` -> ``vae``)."""
    return role.split(".", 1)[0]


def _weights_differ(b: StepSpec, a: StepSpec | None, digest: Callable[[Path], str] | None) -> bool:
    if a is None or set(a.weights) != set(b.weights):
        return True
    if any(not w.present for w in (*a.weights.values(), *b.weights.values())):
        return True  # a side planned without its weights: they may differ
    if digest is not None:
        return any(digest(a.weights[r].path) != digest(w.path) for r, w in b.weights.items())
    return any(a.weights[r] != w for r, w in b.weights.items())


def weight_users(key: str, specs: Sequence[StepSpec], specs_a: Sequence[StepSpec] | None = None,
                 digest: Callable[[Path], str] | None = None) -> set[str]:
    """The steps whose weights a change of ``key`` (``model`` or ``models.X.*``) may swap."""
    parts = key.split(".")
    if key == "model":
        component = None
    elif parts[0] == "models" and len(parts) >= 2:
        component = parts[1]
    else:
        return set()
    users = [s for s in specs if any(component in (None, component_of(r)) for r in s.weights)]
    if specs_a is None:
        return {s.name for s in users}
    before = {s.name: s for s in specs_a}
    return {s.name for s in users if _weights_differ(s, before.get(s.name), digest)}


def invalidated(specs: Sequence[StepSpec], key: str, specs_a: Sequence[StepSpec] | None = None,
                digest: Callable[[Path], str] | None = None, files: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The steps that read ``key``, run weights it swaps or read a file it names (``files``: the
    key's values on either side, paths or ``sha256:`` digests: an input file is read by role, not
    as a param), and everything downstream of them (none for policy fields). ``specs_a``: the
    other side's specs, to compare weights file by file (by ``digest`` when given, else by path
    and source)."""
    if is_policy_field(key):
        return ()
    hit = {s.name for s in specs if _reads(s, key)} | weight_users(key, specs, specs_a, digest)
    by_digest = digest is not None and any(f.startswith("sha256:") for f in files)
    hit |= {s.name for s in specs if any(str(p) in files or (by_digest and f"sha256:{digest(Path(p))}" in files)
                                         for p in s.files.values())}
    changed = True
    while changed:
        grown = hit | {s.name for s in specs if any(src in hit for src in s.inputs.values())}
        changed, hit = grown != hit, grown
    return tuple(s.name for s in specs if s.name in hit)


def diff_values(a: Mapping[str, Any], b: Mapping[str, Any], specs: Sequence[StepSpec],
                specs_a: Sequence[StepSpec] | None = None,
                digest: Callable[[Path], str] | None = None) -> tuple[Change, ...]:
    """Every dotted key whose resolved value differs, in key order (``specs``: side b's plan)."""
    keys = set(a) | set(b)
    keys = sorted(k for k in keys if not any(other.startswith(k + ".") for other in keys))  # no `models = {}`
    return tuple(Change(k, a.get(k, _MISSING), b.get(k, _MISSING),
                        invalidated(specs, k, specs_a, digest, _paths(a.get(k)) | _paths(b.get(k))))
                 for k in keys if _value(a, k) != _value(b, k))


def _paths(value: Any) -> frozenset[str]:
    """The files a setting's value may name (paths, or digests for content-compared inputs): a
    string, or each string of an array."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    return frozenset(v for v in items if isinstance(v, str) and v)


def _value(values: Mapping[str, Any], key: str) -> Any:
    """A resolved value; an absent ``[models.X]`` field means its default (no override of it)."""
    if key in values:
        return values[key]
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "models":
        return MODEL_OVERRIDE_DEFAULTS.get(parts[2], _MISSING)
    return _MISSING


def _val(v: Any) -> str:
    return "(absent)" if v is _MISSING else show(v)


def render_text(rep: DiffReport) -> str:
    """For a terminal."""
    if not rep.changes and not rep.lock_diffs:
        return f"{rep.a} and {rep.b} resolve to the same recipe"
    lines = [f"--- {rep.a}", f"+++ {rep.b}"]
    for c in rep.changes:
        steps = ", ".join(c.invalidates) or "no step (execution policy only)"
        lines.append(f"{dotted_label(c.key)}: {_val(c.old)} → {_val(c.new)}   re-runs: {steps}")
    if rep.lock_diffs:
        lines.append("lock:")
        lines += [f"  {k}: {show(x)} → {show(y)}" for k, x, y in rep.lock_diffs]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A table cell: a pipe inside a value would end the cell."""
    return text.replace("|", "\\|")


def render_md(rep: DiffReport) -> str:
    """For pasting into a code review."""
    out = [f"### `{rep.a}` → `{rep.b}`", ""]
    if rep.changes:
        out += ["| setting | before | after | re-runs |", "|---|---|---|---|"]
        out += [f"| `{dotted_label(c.key)}` | `{_cell(_val(c.old))}` | `{_cell(_val(c.new))}` | "
                f"{', '.join(f'`{s}`' for s in c.invalidates) or '—'} |" for c in rep.changes]
    else:
        out.append("No setting differs.")
    if rep.lock_diffs:
        out += ["", "| lock entry | before | after |", "|---|---|---|"]
        out += [f"| `{k}` | `{_cell(show(x))}` | `{_cell(show(y))}` |" for k, x, y in rep.lock_diffs]
    return "\n".join(out) + "\n"
