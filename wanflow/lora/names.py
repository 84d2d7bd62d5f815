"""Module names of the Wan DiT as LoRA files spell them, translated to the official names.

LoRA keys name a *module* (``blocks.0.self_attn.q``) and a role (``lora_A.weight``, ``.alpha``,
``.diff_b``). The module part comes in three spellings: official dotted names, diffusers dotted
names (``blocks.0.attn1.to_q``), and kohya's underscored names (``blocks_0_self_attn_q``), where
the dots are gone and must be put back from a vocabulary, because ``self_attn`` and ``k_img``
contain underscores themselves. The vocabulary is the one key table of full checkpoints
(``wanflow.models.dit_keys``), so LoRA names and checkpoint names cannot drift apart.
"""

from __future__ import annotations

import re
from functools import lru_cache

from wanflow.models.dit_keys import (
    BLOCK_PAIRS,
    DIFFUSERS_TO_OFFICIAL,
    OFFICIAL_TO_DIFFUSERS,
    TOP_PAIRS,
)
from wanflow.models.loading import rename_keys

#: Official parameters that are tensors of their own, not ``.weight``/``.bias`` of a module.
BARE_PARAMETERS = ("modulation", "emb_pos")


def is_bare(module: str) -> bool:
    """True for names that are a parameter themselves (``blocks.0.modulation``)."""
    return module.rsplit(".", 1)[-1] in BARE_PARAMETERS


def _rename(name: str, table: tuple[tuple[str, str], ...]) -> str:
    return next(iter(rename_keys({name: None}, table)))


def official_module(module: str) -> str:
    """A dotted module name, official or diffusers-spelled, in official spelling.

    Official names pass unchanged (the diffusers rules never match them); names neither table
    knows (``vace_blocks.0.…``) pass unchanged too, so a model that has them can still use them.
    """
    return _rename_module(module, DIFFUSERS_TO_OFFICIAL)


def diffusers_module(module: str) -> str:
    """An official module name in diffusers spelling (``blocks.0.self_attn.o`` → ``…attn1.to_out.0``)."""
    return _rename_module(module, OFFICIAL_TO_DIFFUSERS)


def _rename_module(module: str, table: tuple[tuple[str, str], ...]) -> str:
    """A module name through a parameter-key table: tried as ``<module>.weight`` first (the tables
    are written for parameter keys), else as it stands."""
    probe = module + ".weight"
    renamed = _rename(probe, table)
    if renamed != probe:
        return renamed.removesuffix(".weight")
    return _rename(module, table)


def is_diffusers_spelling(module: str) -> bool:
    """True when a dotted name is diffusers' and not the official one."""
    return official_module(module) != module


@lru_cache(maxsize=1)
def _underscored_rules() -> tuple[tuple[re.Pattern[str], str], ...]:
    """(regex over underscored names, dotted template) for every module of both spellings."""
    rules: list[tuple[re.Pattern[str], str]] = [(re.compile(r"blocks_(\d+)"), r"blocks.\1")]
    for pairs, in_block in ((BLOCK_PAIRS, True), (TOP_PAIRS, False)):
        for spelling in {name.rstrip(".") for pair in pairs for name in pair}:
            flat = re.escape(spelling.replace(".", "_"))
            if in_block:
                rules.append((re.compile(r"blocks_(\d+)_" + flat), r"blocks.\1." + spelling))
            else:
                rules.append((re.compile(flat), spelling))
    return tuple(rules)


def dotted_module(underscored: str) -> str | None:
    """kohya's ``blocks_0_cross_attn_k_img`` → official ``blocks.0.cross_attn.k_img``; None if unknown.

    Underscored diffusers names (``blocks_0_attn1_to_out_0``) are accepted too and come back in
    official spelling."""
    for rx, template in _underscored_rules():
        match = rx.fullmatch(underscored)
        if match:
            return official_module(match.expand(template))
    return None


def underscored_module(module: str) -> str:
    """An official module name as kohya/musubi spell it (dots → underscores)."""
    return module.replace(".", "_")


def parameter_of(module: str, role: str) -> str:
    """The parameter a module-level delta changes: ``.weight``, ``.bias`` or the bare tensor."""
    if role == "bias":
        return module + ".bias"
    return module if is_bare(module) else module + ".weight"
