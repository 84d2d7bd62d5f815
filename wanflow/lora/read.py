"""Read a LoRA file of any dialect into the canonical form (``wanflow.lora.delta.LoraFile``).

Keys are parsed one by one (``wanflow.lora.dialects``) and grouped by the module they name as
the file spells it; each group becomes the deltas of one module. Whatever cannot become a delta
(DoRA, Tucker factors, a factor without its partner, a module wanflow does not know, two spellings
of the same module) is listed in ``unread`` with the reason, never dropped in silence.

Safetensors files are read mapped into memory: the factors stay views of the file until someone
builds ΔW, so reading a LoRA copies nothing up front. PyTorch pickles (Wan2.2-Animate's
``relighting_lora.ckpt``: peft weights under ``state_dict``) are read with
``torch.load(weights_only=True)``, which never runs pickled code.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from wanflow.errors import ModelLoadError
from wanflow.lora.delta import AnyDelta, Full, LoHa, LoKr, LoraFile, LowRank
from wanflow.lora.dialects import ParsedKey, parse_key
from wanflow.lora.names import parameter_of
from wanflow.lora.peft_config import AlphaLookup, alphas_from_header
from wanflow.models import checkpoint_files, signature

#: A LoRA: a safetensors file, or a state dict already in memory.
LoraSource = str | os.PathLike | Mapping[str, torch.Tensor]


def read_lora(source: LoraSource, metadata: Mapping[str, str] | None = None) -> LoraFile:
    """Read a LoRA of any dialect, detected from its keys; ``metadata`` adds to the header's."""
    state, header, name = _open(source)
    header = {**header, **(metadata or {})}
    if not state:
        raise ModelLoadError(f"{name}: holds no tensors, so it is not a LoRA.")
    groups: dict[str, list[ParsedKey]] = {}
    reasons: dict[str, str] = {}
    for key in state:
        parsed = parse_key(key)
        if isinstance(parsed, str):
            reasons[key] = parsed
        else:
            groups.setdefault(parsed.source_module, []).append(parsed)
    alpha_of = alphas_from_header(header)
    built = {src: _build(keys, state, alpha_of) for src, keys in groups.items()}
    deltas = _merge(built, groups, reasons)
    if not deltas:
        raise _not_a_lora(name, state, reasons)
    dialect = _dialect(groups)
    return LoraFile(dialect, deltas, tuple(sorted(reasons)), header, dict(sorted(reasons.items())))


# ----------------------------------------------------------------------------- opening


def _open(source: LoraSource) -> tuple[Mapping[str, torch.Tensor], dict[str, str], str]:
    """(tensors, header metadata, what to call the source in messages)."""
    if isinstance(source, Mapping):
        name = f"the LoRA state dict passed in ({len(source)} entries)"
        return checkpoint_files.tensor_dict(source, name), {}, name
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such LoRA file; check the path.")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder; name the LoRA's .safetensors file in it.")
    kind, description = signature.sniff_file(path)
    if kind in ("torch-zip", "torch-legacy"):
        # weights_only: a pickle that would run code is refused, with how to convert it
        state = checkpoint_files.read_torch(path, legacy=kind == "torch-legacy")
        return state, {}, str(path)
    if kind != "safetensors":
        raise ModelLoadError(f"{path}: not a LoRA: it is {description}. Expected a .safetensors file.")
    state = checkpoint_files.read_safetensors(path)  # checks the header and the length
    return state, _header_metadata(path), str(path)


def _header_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors header (only the header is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as err:
        raise ModelLoadError(f"{path}: unreadable safetensors metadata ({err}).") from None


def _not_a_lora(name: str, state: Mapping[str, torch.Tensor], reasons: Mapping[str, str]) -> ModelLoadError:
    """Say what the file is instead, from its keys and shapes."""
    sample = ", ".join(list(state)[:3])
    what = signature.identify(state)
    looks = f" It looks like {what.describe()}, not a LoRA." if what.kind != "unknown" else ""
    why = Counter(reasons.values()).most_common(1)[0][0] if reasons else "none of them is a LoRA factor"
    return ModelLoadError(
        f"{name}: no LoRA delta could be read from its {len(state)} tensors (keys such as "
        f"{sample}; {why}).{looks} A LoRA holds lora_A/lora_B or lora_down/lora_up pairs, "
        "LyCORIS hada_/lokr_ factors, or .diff deltas."
    )


# ----------------------------------------------------------------------------- alpha


def _alpha_value(tensor: torch.Tensor) -> float | str:
    """A stored alpha as a float, or why it cannot be used."""
    if tensor.numel() != 1:
        return f"an alpha of shape {tuple(tensor.shape)} (expected one number)"
    value = float(tensor.reshape(()).item())
    return value if math.isfinite(value) else f"alpha = {value} is not finite"


# ----------------------------------------------------------------------------- one module


class _Group:
    """The keys of one module, by role; builds its deltas and records what it could not use."""

    def __init__(self, keys: list[ParsedKey], state: Mapping[str, torch.Tensor]):
        self.state, self.module = state, keys[0].module
        self.dialect, self.source = keys[0].dialect, keys[0].source_module
        self.by_role: dict[str, ParsedKey] = {}
        self.deltas: dict[str, AnyDelta] = {}
        self.rejected: dict[str, str] = {}
        self.joined: dict[str, tuple[torch.Tensor, list[str]]] = {}  # slot -> (tensor built, the keys it took)
        for parsed in keys:
            slot = parsed.part or parsed.role
            if slot in self.by_role:
                other = self.by_role.pop(slot).key
                self.reject([other, parsed.key], f"{other} and {parsed.key} are the same factor")
            else:
                self.by_role[slot] = parsed

    def tensor(self, slot: str) -> torch.Tensor:
        if slot in self.joined:
            return self.joined[slot][0]
        return self.state[self.by_role[slot].key]

    def has(self, *slots: str) -> bool:
        return any(s in self.by_role for s in slots)

    def reject(self, keys: list[str], why: str) -> None:
        for key in keys:
            self.rejected[key] = why

    def take(self, slots: tuple[str, ...]) -> list[str]:
        """Remove slots from the group, returning their keys (a joined slot's: every key it took)."""
        keys = []
        for s in slots:
            if s in self.by_role:
                keys += self.joined.pop(s)[1] if s in self.joined else [self.by_role.pop(s).key]
                self.by_role.pop(s, None)
        return keys

    def add(self, parameter: str, delta: AnyDelta, slots: tuple[str, ...]) -> None:
        keys = self.take(slots)
        if parameter in self.deltas:
            self.reject(keys, f"a second delta for {parameter} in the same module")
        else:
            self.deltas[parameter] = delta


LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def _build(keys: list[ParsedKey], state: Mapping[str, torch.Tensor], alpha_of: AlphaLookup) -> _Group:
    """All deltas of one module: at most one factorised delta, plus full deltas and biases."""
    group = _Group(keys, state)
    _join_split_up(group)
    kinds = [k for k, slots in (("lowrank", ("down", "up")), ("loha", LOHA), ("lokr", LOKR))
             if group.has(*slots)]
    if len(kinds) > 1:
        slots = ("down", "up", *LOHA, *LOKR, "alpha")
        group.reject(group.take(slots), f"one module with {' and '.join(kinds)} factors at once")
    stored = _stored_alpha(group)
    weight = parameter_of(group.module, "weight")
    scale = 1.0
    if kinds == ["lowrank"]:
        scale = _lowrank(group, weight, stored, alpha_of)
    elif kinds == ["loha"]:
        _loha(group, weight, stored)
    elif kinds == ["lokr"]:
        _lokr(group, weight, stored)
    _full(group, scale)
    if group.by_role:
        why = _leftover_reason(group)
        group.reject(group.take(tuple(group.by_role)), why)
    return group


def _leftover_reason(group: _Group) -> str:
    roles = sorted(group.by_role)
    if roles == ["alpha"]:
        return "an alpha without factors"
    return f"incomplete or ill-fitting factors (found only {', '.join(roles)})"


def _stored_alpha(group: _Group) -> float | None:
    """The module's .alpha, or None (absent or unusable: then the key is reported). LongCat's
    ``alpha_scale`` is alpha/rank itself: it becomes alpha = scale · rank, under the slot "alpha"."""
    if group.has("alpha_scale"):
        _alpha_from_scale(group)
    if not group.has("alpha"):
        return None
    value = _alpha_value(group.tensor("alpha"))
    if isinstance(value, str):
        group.reject(group.take(("alpha",)), value)
        return None
    return value


def _alpha_from_scale(group: _Group) -> None:
    """LongCat's ``alpha_scale`` (the factor its forward multiplies the LoRA's output by) as the
    alpha of the module's low-rank pair, whose rank is the down-projection's rows."""
    key = group.by_role["alpha_scale"].key
    if group.has("alpha"):
        group.reject(group.take(("alpha", "alpha_scale")), "an alpha and an alpha_scale for one module")
        return
    scale = _alpha_value(group.tensor("alpha_scale"))
    if not group.has("down"):
        why = "an alpha_scale without its lora_down"
    else:
        why = scale if isinstance(scale, str) else f"alpha_scale = {scale} (must be > 0)" if scale <= 0 else ""
    if why:
        group.reject(group.take(("alpha_scale",)), why)
        return
    rank = int(group.tensor("down").shape[0])
    alpha = torch.tensor(scale * rank, dtype=torch.float64)
    group.joined["alpha"] = (alpha, [key])
    group.by_role["alpha"] = group.by_role.pop("alpha_scale")


def _join_split_up(group: _Group) -> None:
    """LongCat's fused layers (``attn.qkv``, ``cross_attn.kv_linear``, ``adaLN_modulation.1``) hold
    one up-projection per output block, ``lora_up.blocks.i`` (out/n, r), fed by rows i·r…(i+1)·r of
    a down-projection (n·r, in). That is one low-rank pair of rank n·r whose up is the blocks on
    the diagonal (zeros elsewhere add exact zeros), joined here into the slot "up"."""
    slots = sorted((s for s in group.by_role if s.startswith("up_block.")), key=lambda s: int(s.split(".")[1]))
    if not slots:
        return
    keys = [group.by_role[s].key for s in slots]
    blocks = [group.tensor(s) for s in slots]
    why = _split_up_problem(group, [int(s.split(".")[1]) for s in slots], blocks)
    if why:
        group.reject(group.take(tuple(slots)), why)
        return
    for s in slots:
        group.by_role.pop(s)
    group.joined["up"] = (torch.block_diag(*blocks), keys)
    group.by_role["up"] = ParsedKey(keys[0], group.dialect, group.module, group.source, "up")


def _split_up_problem(group: _Group, indices: list[int], blocks: list[torch.Tensor]) -> str:
    """Why split up-projections cannot be joined, or "" when they can."""
    if group.has("up"):
        return "lora_up.blocks beside a whole lora_up"
    if indices != list(range(len(blocks))):
        return f"lora_up.blocks numbered {indices}, not 0…{len(blocks) - 1}"
    if any(b.ndim != 2 or b.shape != blocks[0].shape for b in blocks):
        return "lora_up.blocks of different shapes"
    if not group.has("down"):
        return "lora_up.blocks without their lora_down"
    down, rank = group.tensor("down"), int(blocks[0].shape[1])
    if down.ndim != 2 or down.shape[0] != rank * len(blocks):
        return f"lora_down {tuple(down.shape)} does not feed {len(blocks)} lora_up.blocks of rank {rank}"
    return ""


def _lowrank(group: _Group, weight: str, alpha: float | None, alpha_of: AlphaLookup) -> float:
    """up @ down · alpha/rank; returns the scale (PEFT also scales lora_B's bias by it)."""
    if not (group.has("down") and group.has("up")):
        return 1.0  # reported as incomplete
    down, up = group.tensor("down"), group.tensor("up")
    if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0]:
        why = f"lora down {tuple(down.shape)} and up {tuple(up.shape)} do not multiply"
        group.reject(group.take(("down", "up", "alpha")), why)
        return 1.0
    if alpha is None and group.dialect in ("diffusers", "peft"):
        alpha = alpha_of(group.source.removeprefix("transformer."), int(down.shape[0]))
    delta = LowRank(down, up, alpha)
    group.add(weight, delta, ("down", "up", "alpha"))
    return delta.scale


def _loha(group: _Group, weight: str, alpha: float | None) -> None:
    if not all(group.has(s) for s in LOHA):
        return
    w1a, w1b, w2a, w2b = (group.tensor(s) for s in LOHA)
    ok = all(t.ndim == 2 for t in (w1a, w1b, w2a, w2b)) and w1a.shape[1] == w1b.shape[0] \
        and w2a.shape[1] == w2b.shape[0] and (w1a.shape[0], w1b.shape[1]) == (w2a.shape[0], w2b.shape[1])
    if not ok:
        shapes = ", ".join(f"{s} {tuple(group.tensor(s).shape)}" for s in LOHA)
        group.reject(group.take((*LOHA, "alpha")), f"LoHa factors do not fit together ({shapes})")
        return
    group.add(weight, LoHa(w1a, w1b, w2a, w2b, alpha), (*LOHA, "alpha"))


def _lokr(group: _Group, weight: str, alpha: float | None) -> None:
    parts = {s: group.tensor(s) for s in LOKR if group.has(s)}
    whole = {n: (f"lokr_{n}" in parts) != (f"lokr_{n}_a" in parts and f"lokr_{n}_b" in parts) for n in ("w1", "w2")}
    pairs = [(parts[f"lokr_{n}_a"], parts[f"lokr_{n}_b"]) for n in whole
             if f"lokr_{n}_a" in parts and f"lokr_{n}_b" in parts]
    fits = all(a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[0] for a, b in pairs)
    if not all(whole.values()) or not fits or any(t.ndim != 2 for t in parts.values()):
        return  # reported as incomplete
    delta = LoKr(**{s.removeprefix("lokr_").replace("_", ""): t for s, t in parts.items()}, alpha=alpha)
    group.add(weight, delta, (*LOKR, "alpha"))


def _full(group: _Group, lowrank_scale: float) -> None:
    """Whole deltas of weight, bias and modulation, and PEFT's lora_B bias."""
    for role, parameter in (
        ("diff", parameter_of(group.module, "weight")),
        ("diff_b", parameter_of(group.module, "bias")),
        ("diff_m", group.module + ".modulation"),
    ):
        if group.has(role):
            group.add(parameter, Full(group.tensor(role)), (role,))
    if group.has("lora_bias") and parameter_of(group.module, "weight") in group.deltas:
        bias = group.tensor("lora_bias")
        bias = bias if lowrank_scale == 1.0 else bias.float() * lowrank_scale
        group.add(parameter_of(group.module, "bias"), Full(bias), ("lora_bias",))
    elif group.has("lora_bias"):
        group.reject(group.take(("lora_bias",)), "a lora_B bias without its lora_A/lora_B pair")


# ----------------------------------------------------------------------------- the file


def _merge(built: Mapping[str, _Group], groups: Mapping[str, list[ParsedKey]],
           reasons: dict[str, str]) -> dict[str, AnyDelta]:
    """Every group's deltas; two groups changing the same parameter are both unread."""
    owners: dict[str, list[str]] = {}
    for src, group in built.items():
        reasons.update(group.rejected)
        for parameter in group.deltas:
            owners.setdefault(parameter, []).append(src)
    clashing = {src for srcs in owners.values() if len(srcs) > 1 for src in srcs}
    deltas: dict[str, AnyDelta] = {}
    for src, group in built.items():
        if src in clashing:
            others = sorted(s for p in group.deltas for s in owners[p] if s != src)
            why = f"{src} and {', '.join(others)} name the same parameters (two dialects for one module)"
            reasons.update({p.key: why for p in groups[src] if p.key not in group.rejected})
            continue
        deltas.update(group.deltas)
    return dict(sorted(deltas.items()))


def _dialect(groups: Mapping[str, list[ParsedKey]]) -> str:
    """The file's dialect: one name, or the names joined by '+' when keys mix dialects."""
    found = sorted({p.dialect for keys in groups.values() for p in keys})
    return "+".join(found)
