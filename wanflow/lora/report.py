"""Where each LoRA lands on a model, planned from parameter shapes alone, and said plainly.

The commonest LoRA failure is silent: keys that name nothing in the model are skipped and the
image looks "a bit off". So before any weight changes, every delta of every LoRA is placed: on a
parameter of the right shape (patched), on a name this model lacks (reported: a Wan2.1 I2V
LoRA's image-attention keys on a T2V model), or on a parameter of another shape (an error: the
LoRA was made for another architecture, which is named). A LoRA that patches nothing is an
error too. Planning needs only shapes, so it runs from a checkpoint's safetensors header before
any model loads, and from ``named_parameters()`` of a loaded one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import attrs

from wanflow.errors import ModelInputError, ModelLoadError
from wanflow.lora.delta import AnyDelta, Full, LoHa, LoKr, LoraFile, LowRank

Shape = tuple[int, ...]

#: Module kinds a report counts, in the order it prints them.
KINDS = ("self-attention", "cross-attention", "ffn", "norms", "modulation", "head", "embeddings",
         "other")
EMBEDDINGS = ("patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.", "img_emb.",
              "x_embedder.", "t_embedder.", "y_embedder.")  # the last three: LongCat-Video's
#: A block module's name part -> its kind (Wan's names, then LongCat-Video's ``attn``).
BLOCK_PARTS = (("self_attn", "self-attention"), ("cross_attn", "cross-attention"), ("ffn", "ffn"),
               ("attn", "self-attention"))
#: LongCat-Video's self-attention output projection: its name says the DiT, its rows the width.
LONGCAT_PROJ = re.compile(r"blocks\.\d+\.attn\.proj\.weight")
#: Parameters that exist only in DiTs with CLIP image cross-attention (Wan2.1 I2V and FLF2V).
IMAGE_PARTS = ("k_img", "v_img", "norm_k_img", "img_emb")
#: Width of the released Wan DiTs -> what a user calls them.
WIDTHS = {1536: "Wan2.1 T2V-1.3B", 3072: "Wan2.2 TI2V-5B", 5120: "Wan2.1 14B / Wan2.2 A14B"}


def delta_shape(delta: AnyDelta) -> Shape:
    """The shape of ΔW, read off the factors' shapes (nothing is multiplied)."""
    if isinstance(delta, LowRank):
        return (delta.up.shape[0], *delta.down.shape[1:])
    if isinstance(delta, LoHa):
        return (delta.w1a.shape[0], delta.w1b.shape[1])
    if isinstance(delta, LoKr):
        (a, b) = _kron_factor(delta.w1, delta.w1a, delta.w1b)
        (c, d) = _kron_factor(delta.w2, delta.w2a, delta.w2b)
        return (a * c, b * d)
    if isinstance(delta, Full):
        return tuple(delta.diff.shape)
    raise TypeError(f"not a LoRA delta: {type(delta).__name__}")


def _kron_factor(whole, a, b) -> tuple[int, int]:
    return tuple(whole.shape) if whole is not None else (a.shape[0], b.shape[1])


def fits(delta: Shape, param: Shape) -> bool:
    """ΔW fits a parameter of its shape, or a conv kernel it gives flattened as (out, in·k)."""
    if tuple(delta) == tuple(param):
        return True
    return len(param) > 2 and tuple(delta) == (param[0], math.prod(param[1:]))


def module_kind(name: str) -> str:
    """The kind of module an official parameter name belongs to (one of ``KINDS``)."""
    parts = name.split(".")
    if parts[-1] == "modulation" or "adaLN_modulation" in parts:
        return "modulation"
    if any(p.startswith("norm") or p.endswith("_norm") for p in parts):  # norm_q, norm3; LongCat's q_norm
        return "norms"
    for part, kind in BLOCK_PARTS:
        if part in parts:
            return kind
    if name.startswith(("head.", "final_layer.")):
        return "head"
    return "embeddings" if name.startswith(EMBEDDINGS) else "other"


def looks_made_for(shapes: Mapping[str, Shape]) -> str:
    """The Wan DiT (or LongCat-Video's) a set of official-name shapes belongs to, as a user would name it.

    The width (dim) comes from the attention, FFN, norm and modulation shapes; image
    cross-attention names mark Wan2.1 I2V/FLF2V."""
    longcat = [shape[0] for name, shape in shapes.items() if LONGCAT_PROJ.fullmatch(name) and shape]
    if longcat:
        return f"LongCat-Video (width {Counter(longcat).most_common(1)[0][0]})"
    widths = Counter(w for name, shape in shapes.items() if (w := _width(name, shape)))
    if not widths:
        return "no Wan DiT (none of its names is a Wan DiT parameter)"
    width = widths.most_common(1)[0][0]
    image = any(part in name.split(".") for name in shapes for part in IMAGE_PARTS)
    if width == 5120 and image:
        return "Wan2.1 I2V-14B / FLF2V-14B (width 5120, image cross-attention)"
    base = WIDTHS.get(width, "a Wan DiT")
    return f"{base} (width {width}{', image cross-attention' if image else ''})"


def _width(name: str, shape: Shape) -> int | None:
    """The model width a parameter's shape reveals, if its name says where to read it."""
    if not shape:
        return None
    if re.fullmatch(r"blocks\.\d+\.(self|cross)_attn\.(q|k|v|o|k_img|v_img)\.(weight|bias)", name):
        return shape[0]
    if name.endswith("modulation") or re.search(r"\.norm\w*\.(weight|bias)$", name):
        return shape[-1]
    if re.fullmatch(r"blocks\.\d+\.ffn\.2\.(weight|bias)", name):
        return shape[0]
    if re.fullmatch(r"blocks\.\d+\.ffn\.0\.weight", name) and len(shape) == 2:
        return shape[1]
    return None


@attrs.frozen
class Mismatch:
    """A delta whose ΔW has another shape than the model's parameter of that name."""

    name: str
    lora: Shape
    model: Shape

    def __str__(self) -> str:
        return f"{self.name}: LoRA {_dims(self.lora)}, model {_dims(self.model)}"


@attrs.frozen
class LoraPatches:
    """Where one LoRA lands: what it patches (by kind), what it cannot place, and why."""

    label: str
    dialect: str
    scale: float
    patched: tuple[str, ...]  # parameter names, in file order
    absent: tuple[str, ...]  # delta names that are no parameter of this model
    mismatched: tuple[Mismatch, ...]
    unread: tuple[str, ...]  # file keys no rule of its dialect read
    reasons: Mapping[str, str]  # unread key -> why its reader left it
    ranks: tuple[int, ...]  # distinct ranks of its factorised deltas
    made_for: str  # the architecture its shapes describe

    @property
    def by_kind(self) -> dict[str, int]:
        """Patched parameters per module kind (kinds with none left out), in ``KINDS`` order."""
        counts = Counter(module_kind(n) for n in self.patched)
        return {k: counts[k] for k in KINDS if counts[k]}

    def lines(self) -> list[str]:
        """A few readable lines: what was patched, then each kind of key left unplaced."""
        rank = f", rank {'/'.join(map(str, self.ranks))}" if self.ranks else ""
        kinds = ", ".join(f"{k} {n}" for k, n in self.by_kind.items()) or "nothing"
        out = [f"LoRA {self.label} ({self.dialect}{rank}, scale {self.scale:g}): "
               f"patched {len(self.patched)} parameters: {kinds}"]
        if self.absent:
            out.append(f"  not in this model ({len(self.absent)}): {collapse(self.absent)}")
        if self.mismatched:
            out.append(f"  wrong shape ({len(self.mismatched)}): {_first(self.mismatched)}")
        by_reason: dict[str, list[str]] = {}
        for key in self.unread:
            by_reason.setdefault(self.reasons.get(key, ""), []).append(key)
        for why, keys in by_reason.items():
            out.append(f"  unread keys ({len(keys)}): {collapse(keys)}" + (f": {why}" if why else ""))
        return out

    def to_dict(self) -> dict:
        return {
            "label": self.label, "dialect": self.dialect, "scale": self.scale,
            "patched": len(self.patched), "by_kind": self.by_kind, "ranks": list(self.ranks),
            "absent": list(self.absent), "made_for": self.made_for,
            "unread": {key: self.reasons.get(key, "not read") for key in self.unread},
            "mismatched": [{"name": m.name, "lora": list(m.lora), "model": list(m.model)}
                           for m in self.mismatched],
        }


@attrs.frozen
class PatchReport:
    """Every LoRA's placement on one model, in the order they apply."""

    model: str
    loras: tuple[LoraPatches, ...]

    def lines(self) -> list[str]:
        return [line for lora in self.loras for line in lora.lines()]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        """JSON-able, for the run's lock file and events."""
        return {"model": self.model, "loras": [lora.to_dict() for lora in self.loras]}


def plan_patches(
    loras: Sequence[tuple[LoraFile, float]], shapes: Mapping[str, Shape], model_name: str = "",
    *, labels: Sequence[str] | None = None,
) -> PatchReport:
    """Place every delta of every LoRA on the parameters ``shapes`` describes (name -> shape).

    Raises ModelLoadError, naming every problem of every LoRA at once, when a delta has another
    shape than its parameter or a LoRA patches nothing; ModelInputError for a non-finite scale.
    ``labels`` name the LoRAs in messages (their files); by default "#1", "#2", ….
    """
    labels = list(labels) if labels is not None else [f"#{i + 1}" for i in range(len(loras))]
    if len(labels) != len(loras):
        raise ValueError(f"{len(labels)} labels for {len(loras)} LoRAs")
    shapes = {name: tuple(shape) for name, shape in shapes.items()}
    model = model_name or f"this model ({looks_made_for(shapes)})"
    placed = tuple(_place(lora, scale, shapes, label) for (lora, scale), label in zip(loras, labels))
    problems = [p for patches in placed for p in _problems(patches, model)]
    if problems:
        raise ModelLoadError("\n".join(problems))
    return PatchReport(model, placed)


def _place(lora: LoraFile, scale: float, shapes: Mapping[str, Shape], label: str) -> LoraPatches:
    if not math.isfinite(scale):
        raise ModelInputError(f"LoRA {label}: scale {scale} is not a finite number; give e.g. 1.0.")
    own = {name: delta_shape(delta) for name, delta in lora.deltas.items()}
    patched = tuple(n for n, s in own.items() if n in shapes and fits(s, shapes[n]))
    absent = tuple(n for n in own if n not in shapes)
    mismatched = tuple(Mismatch(n, s, shapes[n]) for n, s in own.items()
                       if n in shapes and not fits(s, shapes[n]))
    ranks = tuple(sorted({d.rank for d in lora.deltas.values() if d.rank is not None}))
    return LoraPatches(label, lora.dialect, float(scale), patched, absent, mismatched,
                       tuple(lora.unread), dict(lora.reasons), ranks, looks_made_for(own))


def _problems(p: LoraPatches, model: str) -> list[str]:
    """The errors of one placement: shape mismatches, or nothing patched."""
    fix = f"use a LoRA trained for {model}, or run it with the model it was made for"
    if p.mismatched:
        return [f"LoRA {p.label}: {len(p.mismatched)} of its deltas have other shapes than the "
                f"parameters of {model} ({_first(p.mismatched)}); "
                f"it looks made for {p.made_for}: {fix}."]
    if not p.patched:
        why = f"its {len(p.absent)} deltas name no parameter of it" if p.absent else "it holds no delta"
        unread = f" ({len(p.unread)} keys unread: {collapse(p.unread)})" if p.unread else ""
        return [f"LoRA {p.label} patches nothing in {model}: {why}{unread}; "
                f"it looks made for {p.made_for}: {fix}."]
    return []


def collapse(names: Sequence[str], most: int = 6) -> str:
    """Names with block indices folded (``blocks.*.cross_attn.k_img.weight ×40``), at most `most`."""
    folded = Counter(re.sub(r"(?<![^.])(blocks)\.\d+\.", r"\1.*.", n) for n in names)
    parts = [f"{n} ×{c}" if c > 1 else n for n, c in folded.items()]
    return ", ".join(parts[:most]) + (f", … ({len(parts) - most} more)" if len(parts) > most else "")


def _first(mismatched: Sequence[Mismatch], most: int = 3) -> str:
    return "; ".join(map(str, mismatched[:most])) + ("; …" if len(mismatched) > most else "")


def _dims(shape: Shape) -> str:
    return "×".join(map(str, shape)) or "scalar"
