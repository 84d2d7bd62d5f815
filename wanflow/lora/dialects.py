"""The key grammar of every LoRA dialect: how a key splits into dialect, module and role.

A LoRA key is ``<prefix><module><role>``: ``diffusion_model.`` + ``blocks.0.self_attn.q`` +
``.lora_down.weight``. The prefix tells the dialect (and whether the module is dotted, underscored
or, in LongCat-Video's own files, spelled with ``___lorahyphen___`` for its dots), the role tells
which factor or delta the tensor is. Detection is per key, from the
key alone (never the file name), so a file mixing dialects is still read key by key.

The writing side of each dialect (names, and which kinds of delta it can hold) is here too, so
that reading and writing share one description.
"""

from __future__ import annotations

import re

import attrs

from wanflow.errors import WanflowError
from wanflow.lora.names import dotted_module, is_diffusers_spelling, official_module

#: How LongCat-Video's LoRA files spell a dot of a module name (``lora___lorahyphen___blocks___lorahyphen___0…``).
HYPHEN = "___lorahyphen___"

#: (key prefix, dialect, module spelling): the first that starts a key wins.
PREFIXES: tuple[tuple[str, str, str], ...] = (
    (f"lora{HYPHEN}", "longcat", "hyphenated"),
    ("base_model.model.", "peft", "dotted"),
    ("model.diffusion_model.", "comfyui", "dotted"),
    ("diffusion_model.", "comfyui", "dotted"),
    ("transformer.", "diffusers", "dotted"),
    ("pipe.dit.", "diffsynth", "dotted"),
    ("lora_unet__", "videox-fun", "underscored"),
    ("lora_unet_", "musubi", "underscored"),
    ("lycoris_", "lycoris", "underscored"),
    ("", "diffsynth", "dotted"),
)

#: (regex matching the end of a key, role). Roles are what ``read`` assembles deltas from.
ROLES: tuple[tuple[str, str], ...] = (
    (r"\.lora_A(\.default)?\.weight", "down"),
    (r"\.lora_B(\.default)?\.weight", "up"),
    (r"\.lora_down\.weight", "down"),
    (r"\.lora_up\.weight", "up"),
    (r"\.lora_up\.blocks\.(\d+)\.weight", "up_block"),  # LongCat: one up per output block of a fused layer
    (r"\.alpha_scale", "alpha_scale"),  # LongCat: alpha / rank itself
    (r"\.lora_B(\.default)?\.bias", "lora_bias"),  # PEFT's lora_bias (diffusers' home for diff_b)
    (r"\.alpha", "alpha"),
    (r"\.(hada_w[12]_[ab])", "loha"),
    (r"\.(lokr_w[12](_[ab])?)", "lokr"),
    (r"\.diff", "diff"),
    (r"\.diff_b", "diff_b"),
    (r"\.diff_m", "diff_m"),  # lightx2v: the block's modulation
    (r"\.w_norm", "diff"),  # LyCORIS norm modules: deltas of weight and bias
    (r"\.b_norm", "diff_b"),
)

#: Roles wanflow recognises but cannot represent: (regex, why), reported as unread.
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    (r"\.dora_scale", "DoRA (weight-decomposed LoRA) is not supported"),
    (r"\.lora_magnitude_vector(\.default)?(\.weight)?", "DoRA (weight-decomposed LoRA) is not supported"),
    (r"\.(hada_t[12]|lokr_t[12])", "LyCORIS Tucker factors are not supported"),
)


@attrs.frozen
class ParsedKey:
    """One key of a LoRA file, understood."""

    key: str
    dialect: str
    module: str  # official dotted module name
    source_module: str  # the module as the file spells it, prefix included (groups keys)
    role: str
    part: str = ""  # the LyCORIS factor name for roles "loha"/"lokr" ("hada_w1_a", "lokr_w2"); "up_block.N"


def parse_key(key: str) -> ParsedKey | str:
    """The key understood, or a short reason why it is not a LoRA key wanflow can read."""
    for pattern, why in UNSUPPORTED:
        if re.search(pattern + "$", key):
            return why
    for pattern, role in ROLES:
        match = re.search(pattern + "$", key)
        if match:
            source_module = key[: match.start()]
            part = match.group(1) if role in ("loha", "lokr") else ""
            part = f"up_block.{match.group(1)}" if role == "up_block" else part
            return _with_module(key, source_module, role, part)
    return "not a LoRA key (no lora_A/B, lora_down/up, alpha, hada_, lokr_ or diff suffix)"


def _with_module(key: str, source_module: str, role: str, part: str) -> ParsedKey | str:
    prefix, dialect, spelling = next(p for p in PREFIXES if source_module.startswith(p[0]))
    bare = source_module[len(prefix):]
    if not bare:
        return "the key names no module"
    if spelling == "hyphenated":  # LongCat's own module names, dots spelled out
        module = bare.replace(HYPHEN, ".")
    elif spelling == "underscored":
        module = dotted_module(bare)
        if module is None:
            return f"{bare!r} is not a module of the Wan DiT wanflow knows"
    else:
        module = official_module(bare)
        if dialect == "diffsynth" and is_diffusers_spelling(bare):
            dialect = "diffusers"  # diffusers names saved without the transformer. prefix
    return ParsedKey(key, dialect, module, source_module, role, part)


# ----------------------------------------------------------------------------- writing


class LoraFormatError(WanflowError):
    """A LoRA cannot be written in the dialect asked for (it holds deltas the dialect cannot)."""


@attrs.frozen
class WriteSpec:
    """How one dialect names what it writes, and which deltas it can hold."""

    prefix: str
    spelling: str  # "dotted" (official), "diffusers", "underscored" or "hyphenated" (LongCat's)
    down: str
    up: str
    holds: tuple[str, ...]  # "lowrank", "loha", "lokr", "full"
    #: "when-stored" (an .alpha key when the delta has one), "always", "metadata", or "scale"
    #: (LongCat's ``alpha_scale``: the scale alpha/rank itself, always written)
    alpha: str
    note: str  # what to use instead, for the refusal message


WRITE_SPECS: dict[str, WriteSpec] = {
    "diffsynth": WriteSpec("", "dotted", "lora_A.default.weight", "lora_B.default.weight",
                           ("lowrank",), "when-stored",
                           "DiffSynth reads only low-rank pairs; use --format comfyui"),
    "comfyui": WriteSpec("diffusion_model.", "dotted", "lora_A.weight", "lora_B.weight",
                         ("lowrank", "loha", "lokr", "full"), "when-stored", ""),
    "diffusers": WriteSpec("transformer.", "diffusers", "lora_A.weight", "lora_B.weight",
                           ("lowrank",), "metadata",
                           "diffusers (PEFT) holds low-rank pairs and bias deltas beside them; "
                           "use --format comfyui"),
    "musubi": WriteSpec("lora_unet_", "underscored", "lora_down.weight", "lora_up.weight",
                        ("lowrank", "loha", "lokr"), "always",
                        "musubi/kohya names hold no full deltas; use --format comfyui"),
    "longcat": WriteSpec(f"lora{HYPHEN}", "hyphenated", "lora_down.weight", "lora_up.weight", ("lowrank",),
                         "scale", "LongCat-Video's own format holds low-rank pairs only; use --format comfyui"),
}

#: The dialects ``write_lora`` and ``wanflow lora convert --format`` accept.
WRITABLE: tuple[str, ...] = tuple(WRITE_SPECS)
