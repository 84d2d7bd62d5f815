"""What a LoRA holds, for ``wanflow lora inspect`` and for file headers: modules changed by kind,
delta types, ranks, alphas, and the Wan model its shapes say it was made for.

Module kinds, ΔW shapes and the model guess are the report's (``wanflow.lora.report``), so
``inspect`` and a run's LoRA report count the same way. Only ``.shape`` is read: describing a
mapped LoRA reads no tensor data.
"""

from __future__ import annotations

import re
from collections import Counter

import attrs

from wanflow.lora.delta import AnyDelta, Full, LoHa, LoKr, LoraFile, LowRank
from wanflow.lora.report import KINDS, delta_shape, looks_made_for, module_kind


def delta_type(delta: AnyDelta) -> str:
    """'low-rank', 'LoHa', 'LoKr' or 'full'."""
    return {LowRank: "low-rank", LoHa: "LoHa", LoKr: "LoKr", Full: "full"}[type(delta)]


def module_of(parameter: str) -> str:
    """The module a parameter belongs to (``….q.weight`` → ``….q``; bare tensors are their own)."""
    return parameter.rsplit(".", 1)[0] if parameter.endswith((".weight", ".bias")) else parameter


def made_for(lora: LoraFile) -> str:
    """The Wan DiT the LoRA's shapes describe, and how many blocks it changes."""
    shapes = {name: tuple(delta_shape(d)) for name, d in lora.deltas.items()}
    blocks = {int(m.group(1)) for name in shapes if (m := re.match(r"blocks\.(\d+)\.", name))}
    depth = f"; changes blocks 0–{max(blocks)}" if blocks else ""
    return looks_made_for(shapes) + depth


@attrs.frozen
class Summary:
    """Everything ``wanflow lora inspect`` prints."""

    dialect: str
    made_for: str
    modules: dict[str, int]  # kind -> modules changed
    types: dict[str, int]  # 'low-rank'/'LoHa'/'LoKr'/'full' -> parameters
    ranks: dict[int, int]  # rank -> deltas
    alphas: dict[str, int]  # alpha as stored ('none (scale 1)' when absent) -> deltas
    unread: dict[str, str]  # key -> why
    metadata: dict[str, str]


def summarize(lora: LoraFile) -> Summary:
    """Count what a LoRA changes, by module kind, delta type, rank and alpha."""
    kinds = Counter(module_kind(p) for p in {module_of(p): p for p in lora.deltas}.values())
    ranks = Counter(d.rank for d in lora.deltas.values() if d.rank is not None)
    alphas = Counter(_alpha(d) for d in lora.deltas.values() if not isinstance(d, Full))
    return Summary(
        dialect=lora.dialect,
        made_for=made_for(lora),
        modules={k: kinds[k] for k in KINDS if kinds[k]},
        types=dict(Counter(delta_type(d) for d in lora.deltas.values())),
        ranks=dict(sorted(ranks.items())),
        alphas=dict(sorted(alphas.items())),
        unread={k: lora.reasons.get(k, "not read") for k in lora.unread},
        metadata=dict(lora.metadata),
    )


def _alpha(delta: AnyDelta) -> str:
    return "none (scale 1)" if delta.alpha is None else f"{delta.alpha:g}"


def render(summary: Summary, *, metadata_width: int = 100) -> str:
    """The summary as the lines ``wanflow lora inspect`` prints."""
    lines = [f"dialect: {summary.dialect}", f"made for: {summary.made_for}", "modules changed:"]
    lines += [f"  {kind}: {count}" for kind, count in summary.modules.items()]
    lines.append("deltas: " + ", ".join(f"{n} {t}" for t, n in summary.types.items()))
    if summary.ranks:
        lines.append("ranks: " + ", ".join(f"{r} ({n})" for r, n in summary.ranks.items()))
    if summary.alphas:
        lines.append("alphas: " + ", ".join(f"{a} ({n})" for a, n in summary.alphas.items()))
    lines.append(f"metadata: {len(summary.metadata)} entries" + (":" if summary.metadata else ""))
    for key, value in sorted(summary.metadata.items()):
        flat = " ".join(value.split())  # JSON values span lines
        text = flat if len(flat) <= metadata_width else flat[:metadata_width] + "…"
        lines.append(f"  {key} = {text}")
    lines.append(f"unread keys: {len(summary.unread)}" + (":" if summary.unread else ""))
    lines += [f"  {key}: {why}" for key, why in summary.unread.items()]
    return "\n".join(lines)
