"""The recipe's ``[[lora]]`` tables as planned inputs of denoise: files, per-expert scales, a report.

A LoRA changes only the DiT, so its file is a weight of the denoise node (its digest is in the
denoise key, and through the output digests in decode's and save's): text and image encodes stay
cache hits when a LoRA or its scale changes. Before anything loads, each LoRA is read (dialect
detected from its keys) and checked against the DiT's parameter shapes from the checkpoint
headers: a LoRA for another architecture, or one that patches nothing, is refused with the model
it looks made for; keys it cannot place are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from wanflow.engine.step import WeightFile
from wanflow.errors import ModelLoadError

log = structlog.get_logger(__name__)

#: (weight role of the LoRA file, DiT role it patches, scale), in recipe order.
LoraUse = tuple[str, str, float]


def resolve_loras(resolved: Any, fetch: bool) -> tuple[dict[str, WeightFile], list[str]]:
    """Each LoRA's file as weight role ``lora.<i>``; messages for those that cannot be found."""
    from wanflow.families.spec import ComponentSpec
    from wanflow.sources import resolve_component

    base = Path(resolved.path).parent
    out: dict[str, WeightFile] = {}
    missing: list[str] = []
    for i, lora in enumerate(resolved.recipe.lora):
        role = f"lora.{i}"
        if lora.path:
            out[role] = WeightFile(Path(lora.path), "local", "")
            continue
        spec = ComponentSpec("lora", lora.source, (lora.file,))
        try:
            found = resolve_component(spec, None, base_dir=base, name=f"[[lora]] #{i + 1}",
                                      offline=None if fetch else True)
        except ModelLoadError as exc:
            missing.append(str(exc))
            out[role] = WeightFile(Path(lora.file), lora.source, "", present=False)
            continue
        out[role] = WeightFile(found.files[0], found.source, found.revision or "")
    return out, missing


def lora_uses(resolved: Any, dits: Sequence[str]) -> tuple[LoraUse, ...]:
    """Which DiT each LoRA patches at which scale (a scale of 0 leaves that DiT alone).

    On A14B, ``target = "dit"`` means both experts, each at ``scale_high_noise`` /
    ``scale_low_noise`` when set, else ``scale``; an expert's name targets that expert only."""
    per_expert = {"dit_high_noise": "scale_high_noise", "dit_low_noise": "scale_low_noise"}
    uses = []
    for i, lora in enumerate(resolved.recipe.lora):
        for dit in dits:
            if lora.target not in ("dit", dit):
                continue
            own = getattr(lora, per_expert[dit]) if dit in per_expert else None
            scale = float(lora.scale if own is None else own)
            if scale != 0.0:
                uses.append((f"lora.{i}", dit, scale))
    return tuple(uses)


def check_loras(uses: Sequence[LoraUse], loras: Mapping[str, WeightFile],
                dits: Mapping[str, Sequence[Path]], family: str) -> list[str]:
    """Read every LoRA and check it against the DiT it patches (shapes from the headers); the
    report's lines. Raises, naming the LoRA and what it looks made for, when one cannot apply."""
    from wanflow.lora import plan_patches, read_lora
    from wanflow.memory.sizes import dit_shapes

    lines: list[str] = []
    for dit in dict.fromkeys(d for _, d, _ in uses):
        chosen = [(role, scale) for role, d, scale in uses if d == dit]
        files = [loras[role].path for role, _ in chosen]
        read = [read_lora(path) for path in files]
        report = plan_patches(list(zip(read, (s for _, s in chosen), strict=True)),
                              dit_shapes(dits[dit]), model_name=f"{family} {dit}",
                              labels=[path.name for path in files])
        lines += [f"{dit}: {line}" for line in report.lines()]
    return lines
