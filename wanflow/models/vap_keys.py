"""Video-As-Prompt's keys: diffusers' ``WanTransformer3DMOTModel`` names <-> wanflow's.

The released file names the main stream as diffusers' ``WanTransformer3DModel`` does (converted
by ``dit_keys``) and the reference stream by the same names with ``_mot_ref`` after their first
part: ``patch_embedding_mot_ref``, ``condition_embedder_mot_ref.*``, and in the joined blocks
``blocks.N.{attn1,attn2,norm2,ffn,scale_shift_table}_mot_ref``. wanflow keeps the reference
stream under ``mot.`` with the official names below it, its blocks numbered as the main blocks
they join: ``blocks.4.attn1_mot_ref.to_q.weight`` is ``mot.blocks.4.self_attn.q.weight``.
Both directions come from the same pairs (those of ``dit_keys``), so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from wanflow.models import dit_keys
from wanflow.models.full_training import RELEASED_REFERENCE_SUFFIX
from wanflow.models.loading import rename_keys
from wanflow.models.vap_config import MOT_PREFIX

#: What the authors append to a diffusers name's first part for the reference stream.
MOT_SUFFIX = RELEASED_REFERENCE_SUFFIX

#: Top-level (official, diffusers) pairs the reference stream has: no head, no FLF2V position.
TOP_PAIRS = tuple(
    (official, diffusers) for official, diffusers in dit_keys.TOP_PAIRS
    if official.startswith(("patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.",
                            "img_emb.proj."))
)


def mot_name(diffusers: str) -> str:
    """A diffusers name with ``_mot_ref`` after its first part: 'attn1.to_q.' -> 'attn1_mot_ref.to_q.'."""
    first, dot, rest = diffusers.partition(".")
    return first + MOT_SUFFIX + dot + rest


def _rule(source: str, target: str, block: bool, to_wanflow: bool) -> tuple[str, str]:
    """One regex rule between a diffusers name (``source`` when ``to_wanflow``) and an official one
    under ``mot.``; a trailing '.' captures the rest of the key, blocks capture their index."""
    src_prefix, dst_prefix = ("", MOT_PREFIX) if to_wanflow else (MOT_PREFIX, "")
    head = re.escape(src_prefix) + (r"blocks\.(\d+)\." if block else "")
    out = dst_prefix + (r"blocks.\1." if block else "")
    if source.endswith("."):
        return head + re.escape(source) + "(.+)", out + target + (r"\2" if block else r"\1")
    return head + re.escape(source), out + target


def _table(to_wanflow: bool) -> tuple[tuple[str, str], ...]:
    """(regex, replacement) rules for the reference stream's keys, one direction."""
    rules = []
    for pairs, block in ((dit_keys.BLOCK_PAIRS, True), (TOP_PAIRS, False)):
        for official, diffusers in pairs:
            theirs = mot_name(diffusers)
            pair = (theirs, official) if to_wanflow else (official, theirs)
            rules.append(_rule(*pair, block=block, to_wanflow=to_wanflow))
    return tuple(rules)


#: The released (diffusers) reference-stream keys -> wanflow's.
DIFFUSERS_TO_WANFLOW: tuple[tuple[str, str], ...] = _table(to_wanflow=True)

#: wanflow's reference-stream keys -> the released (diffusers) names.
WANFLOW_TO_DIFFUSERS: tuple[tuple[str, str], ...] = _table(to_wanflow=False)


def is_released_mot_key(key: str) -> bool:
    """Whether a diffusers-named key belongs to the reference stream."""
    return MOT_SUFFIX in key


def to_wanflow(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A released (diffusers-named) state dict under wanflow's names, both streams."""
    main = {k: v for k, v in state.items() if not is_released_mot_key(k)}
    mot = {k: v for k, v in state.items() if is_released_mot_key(k)}
    return rename_keys(main, dit_keys.DIFFUSERS_TO_OFFICIAL) | rename_keys(mot, DIFFUSERS_TO_WANFLOW)


def to_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """wanflow's state dict under the released names (for saving in the authors' layout)."""
    main = {k: v for k, v in state.items() if not k.startswith(MOT_PREFIX)}
    mot = {k: v for k, v in state.items() if k.startswith(MOT_PREFIX)}
    return rename_keys(main, dit_keys.OFFICIAL_TO_DIFFUSERS) | rename_keys(mot, WANFLOW_TO_DIFFUSERS)
