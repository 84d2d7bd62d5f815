"""Semantic difference of two recipes or archives, and the steps each change invalidates."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from wanflow.engine.explain import dotted_label, show
from wanflow.engine.keys import is_policy_field
from wanflow.engine.step import StepSpec

_MISSING = object()


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


def invalidated(specs: Sequence[StepSpec], key: str) -> tuple[str, ...]:
    """The steps that read ``key`` and everything downstream of them (none for policy fields)."""
    if is_policy_field(key):
        return ()
    hit = {s.name for s in specs if _reads(s, key)}
    changed = True
    while changed:
        grown = hit | {s.name for s in specs if any(src in hit for src in s.inputs.values())}
        changed, hit = grown != hit, grown
    return tuple(s.name for s in specs if s.name in hit)


def diff_values(a: Mapping[str, Any], b: Mapping[str, Any],
                specs: Sequence[StepSpec]) -> tuple[Change, ...]:
    """Every dotted key whose resolved value differs, in key order."""
    keys = sorted(set(a) | set(b))
    return tuple(Change(k, a.get(k, _MISSING), b.get(k, _MISSING), invalidated(specs, k))
                 for k in keys if a.get(k, _MISSING) != b.get(k, _MISSING))


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
