"""Write a LoRA in one of the dialects other tools read: diffsynth, comfyui, diffusers, musubi, longcat.

Round trips are exact: factors are written as they are (same dtype, same bits) and the trainer's
alpha travels beside them in the dialect's own place (an ``.alpha`` key; for diffusers, PEFT's
``lora_alpha``/``alpha_pattern`` in the header, which diffusers itself reads), never folded into
the factors, so reading the file back builds bit-identical ΔW. A delta a dialect cannot hold
(a full delta in musubi names, LoHa in diffusers) is refused with the dialect that can.

The header records the dialect, ranks, alphas, the base model and, when given, the digest of
the recipe that produced the LoRA; the source file's own metadata is carried over.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from wanflow.lora.delta import AnyDelta, Full, LoHa, LoKr, LoraFile, LowRank
from wanflow.lora.describe import delta_type, made_for, module_of
from wanflow.lora.dialects import HYPHEN, WRITE_SPECS, LoraFormatError, WriteSpec
from wanflow.lora.names import diffusers_module, dotted_module, underscored_module
from wanflow.lora.peft_config import ADAPTER_METADATA_KEY, config_json
from wanflow.models.checkpoint_files import capped
from wanflow.models.stable_safetensors import save_stable

_KIND_OF_TYPE = {"low-rank": "lowrank", "LoHa": "loha", "LoKr": "lokr", "full": "full"}


def write_lora(
    lora: LoraFile, path: str | os.PathLike, dialect: str, *, base_model: str | None = None,
    recipe_digest: str | None = None, metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``lora`` to ``path`` (atomically) in ``dialect``; ``metadata`` adds header entries."""
    path = Path(path)
    spec = _spec(dialect)
    _refuse_what_it_cannot_hold(lora, dialect, spec, path)
    tensors: dict[str, torch.Tensor] = {}
    peft_modules: dict[str, tuple[int, float]] = {}  # diffusers module -> (rank, alpha)
    for parameter, delta in lora.deltas.items():
        stem = spec.prefix + _spelled(module_of(parameter), spec)
        tensors.update(_entries(stem, parameter, delta, spec))
        if spec.alpha == "metadata" and isinstance(delta, LowRank):
            alpha = delta.rank if delta.alpha is None else delta.alpha
            peft_modules[stem.removeprefix(spec.prefix)] = (delta.rank, float(alpha))
    header = _header(lora, dialect, base_model, recipe_digest, metadata)
    if spec.alpha == "metadata":
        header[ADAPTER_METADATA_KEY] = config_json(peft_modules, lora_bias=any(k.endswith(".lora_B.bias") for k in tensors))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(save_stable({k: v.contiguous() for k, v in tensors.items()}, metadata=header))
    os.replace(partial, path)
    return path


def _spec(dialect: str) -> WriteSpec:
    if dialect not in WRITE_SPECS:
        raise LoraFormatError(f"no LoRA dialect {dialect!r} to write; choose one of {sorted(WRITE_SPECS)}.")
    return WRITE_SPECS[dialect]


def _spelled(module: str, spec: WriteSpec) -> str:
    if spec.spelling == "diffusers":
        return diffusers_module(module)
    if spec.spelling == "underscored":
        return underscored_module(module)
    if spec.spelling == "hyphenated":
        return module.replace(".", HYPHEN)
    return module


# ----------------------------------------------------------------------------- refusals


def _refuse_what_it_cannot_hold(lora: LoraFile, dialect: str, spec: WriteSpec, path: Path) -> None:
    """Every delta the dialect cannot name or hold, in one error."""
    problems = [f"{p} ({why})" for p, d in lora.deltas.items() if (why := _cannot(p, d, lora, spec))]
    if problems:
        hint = f" {spec.note}." if spec.note else ""
        raise LoraFormatError(
            f"cannot write {path} as {dialect}: {len(problems)} of the LoRA's deltas do not fit "
            f"that dialect: {capped(problems)}.{hint}"
        )


def _cannot(parameter: str, delta: AnyDelta, lora: LoraFile, spec: WriteSpec) -> str:
    """Why the dialect cannot hold this delta, or '' when it can."""
    kind = _KIND_OF_TYPE[delta_type(delta)]
    module = module_of(parameter)
    if spec.spelling == "underscored" and dotted_module(underscored_module(module)) != module:
        return f"kohya-style names cannot spell the module {module}"
    if kind != "full" and not parameter.endswith(".weight"):
        return f"a {delta_type(delta)} delta of a tensor that is no module's weight"
    if kind == "full" and spec.alpha == "metadata" and parameter.endswith(".bias"):
        partner = lora.deltas.get(module + ".weight")
        if isinstance(partner, LowRank) and partner.scale == 1.0:
            return ""  # PEFT's lora_B bias, beside the module's pair
        return "a bias delta needs a low-rank pair of scale 1 on the same module (PEFT lora_bias)"
    if kind not in spec.holds:
        return f"a {delta_type(delta)} delta"
    return ""


# ----------------------------------------------------------------------------- keys


def _alpha_tensor(alpha: float) -> torch.Tensor:
    """A 0-d alpha, fp32 when that holds it exactly (what trainers write), else fp64."""
    single = torch.tensor(alpha, dtype=torch.float32)
    return single if float(single) == alpha else torch.tensor(alpha, dtype=torch.float64)


def _with_alpha(stem: str, alpha: float | None, rank: int | None, spec: WriteSpec) -> dict[str, torch.Tensor]:
    """The .alpha key, as the dialect's policy says (musubi always writes one: alpha = rank)."""
    if spec.alpha == "when-stored" and alpha is not None:
        return {f"{stem}.alpha": _alpha_tensor(alpha)}
    if spec.alpha == "always" and (alpha is not None or rank is not None):
        return {f"{stem}.alpha": _alpha_tensor(float(rank if alpha is None else alpha))}
    if spec.alpha == "scale":  # LongCat loads it strictly: always there, 1 for a LoRA without alpha
        scale = 1.0 if alpha is None or alpha <= 0 or rank is None else alpha / rank  # LowRank.scale's rule
        return {f"{stem}.alpha_scale": _alpha_tensor(scale)}
    return {}


def _entries(stem: str, parameter: str, delta: AnyDelta, spec: WriteSpec) -> dict[str, torch.Tensor]:
    """The keys and tensors of one delta."""
    if isinstance(delta, LowRank):
        out = {f"{stem}.{spec.down}": delta.down, f"{stem}.{spec.up}": delta.up}
        return out | _with_alpha(stem, delta.alpha, delta.rank, spec)
    if isinstance(delta, LoHa):
        factors = {"hada_w1_a": delta.w1a, "hada_w1_b": delta.w1b, "hada_w2_a": delta.w2a, "hada_w2_b": delta.w2b}
        return {f"{stem}.{n}": t for n, t in factors.items()} | _with_alpha(stem, delta.alpha, delta.rank, spec)
    if isinstance(delta, LoKr):
        factors = {"lokr_w1": delta.w1, "lokr_w1_a": delta.w1a, "lokr_w1_b": delta.w1b,
                   "lokr_w2": delta.w2, "lokr_w2_a": delta.w2a, "lokr_w2_b": delta.w2b}
        out = {f"{stem}.{n}": t for n, t in factors.items() if t is not None}
        return out | _with_alpha(stem, delta.alpha, delta.rank, spec)
    return {_full_key(stem, parameter, spec): delta.diff}


def _full_key(stem: str, parameter: str, spec: WriteSpec) -> str:
    if spec.alpha == "metadata":
        return f"{stem}.lora_B.bias"  # PEFT lora_bias (checked by _cannot)
    return f"{stem}.diff_b" if parameter.endswith(".bias") else f"{stem}.diff"


# ----------------------------------------------------------------------------- header


def _header(lora: LoraFile, dialect: str, base_model: str | None, recipe_digest: str | None,
            extra: Mapping[str, str] | None) -> dict[str, str]:
    """The source's metadata carried over, then wanflow's own entries."""
    carried = {k: v for k, v in lora.metadata.items()
               if not k.startswith("wanflow.") and k != ADAPTER_METADATA_KEY}
    header = {**carried, "format": "pt", **{str(k): str(v) for k, v in (extra or {}).items()}}
    ranks = sorted({d.rank for d in lora.deltas.values() if d.rank is not None})
    alphas = sorted({d.alpha for d in lora.deltas.values() if not isinstance(d, Full) and d.alpha is not None})
    header["wanflow.dialect"] = dialect
    header["wanflow.rank"] = ",".join(map(str, ranks)) or "none"
    header["wanflow.alpha"] = ",".join(f"{a:g}" for a in alphas) or "none (alpha = rank, scale 1)"
    header["wanflow.base_model"] = base_model or made_for(lora)
    if recipe_digest:
        header["wanflow.recipe_digest"] = recipe_digest
    return header
