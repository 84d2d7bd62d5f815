"""Key tables between the official Wan DiT layout and the other layouts its weights ship in.

Tables are ordered (regex, replacement) pairs for ``wanflow.models.loading.rename_keys``: the
first full match wins and unmatched keys are kept. The official layout is wanflow's own.
- diffusers ``WanTransformer3DModel``: other names, and its cross-attention LayerNorm is
  ``norm2`` where the official one is ``norm3`` (the FFN norm has no weights in either).
- ComfyUI repackaged single files: the official keys behind ``model.diffusion_model.``.
- Krea Realtime's single file: the official keys behind ``model.``.

The derivative parts follow the same rules: a VACE block (``vace_blocks.N.``) is renamed as a
main block, its ``before_proj``/``after_proj`` are diffusers' ``proj_in``/``proj_out``;
``vace_patch_embedding``, ``ref_conv`` and ``control_adapter`` keep their names in every layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: (official, diffusers) name pairs inside ``blocks.N.``; a trailing '.' means 'and below'.
BLOCK_PAIRS: tuple[tuple[str, str], ...] = (
    ("self_attn.q.", "attn1.to_q."),
    ("self_attn.k.", "attn1.to_k."),
    ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."),
    ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."),
    ("cross_attn.k.", "attn2.to_k."),
    ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."),
    ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("cross_attn.k_img.", "attn2.add_k_proj."),
    ("cross_attn.v_img.", "attn2.add_v_proj."),
    ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
    ("norm3.", "norm2."),  # the affine cross-attention norm
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),
)

#: (official, diffusers) pairs that only VACE blocks have.
VACE_PAIRS: tuple[tuple[str, str], ...] = (
    ("before_proj.", "proj_in."),
    ("after_proj.", "proj_out."),
)

#: (official, diffusers) pairs outside the blocks.
TOP_PAIRS: tuple[tuple[str, str], ...] = (
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),  # FLF2V
    ("head.modulation", "scale_shift_table"),
    ("head.head.", "proj_out."),
)

#: The prefix ComfyUI puts before every official key in its repackaged single files.
COMFYUI_PREFIX = "model.diffusion_model."

#: The prefix of every key in Krea Realtime's single file.
KREA_PREFIX = "model."


def _rule(source: str, target: str, block: str) -> tuple[str, str]:
    """One regex rule: a trailing '.' captures the rest of the key; blocks ('blocks' or
    'vace_blocks'; '' outside them) capture their index."""
    head, head_out = (rf"{block}\.(\d+)\.", rf"{block}.\1.") if block else ("", "")
    group = 2 if block else 1
    if source.endswith("."):
        return head + re.escape(source) + r"(.+)", head_out + target + rf"\{group}"
    return head + re.escape(source), head_out + target


def _table(to_official: bool) -> tuple[tuple[str, str], ...]:
    """Both directions come from the same pairs, so they cannot drift apart."""
    rules = []
    scopes = ((BLOCK_PAIRS, "blocks"), (VACE_PAIRS + BLOCK_PAIRS, "vace_blocks"), (TOP_PAIRS, ""))
    for pairs, block in scopes:
        for official, diffusers in pairs:
            src, dst = (diffusers, official) if to_official else (official, diffusers)
            rules.append(_rule(src, dst, block))
    return tuple(rules)


#: diffusers ``WanTransformer3DModel`` keys -> official keys.
DIFFUSERS_TO_OFFICIAL: tuple[tuple[str, str], ...] = _table(to_official=True)

#: official keys -> diffusers ``WanTransformer3DModel`` keys.
OFFICIAL_TO_DIFFUSERS: tuple[tuple[str, str], ...] = _table(to_official=False)

#: ComfyUI repackaged single file -> official keys.
COMFYUI_TO_OFFICIAL: tuple[tuple[str, str], ...] = ((re.escape(COMFYUI_PREFIX) + "(.+)", r"\1"),)

#: Krea Realtime's ``model.``-prefixed file -> official keys.
KREA_TO_OFFICIAL: tuple[tuple[str, str], ...] = ((re.escape(KREA_PREFIX) + "(.+)", r"\1"),)

#: Layout (as ``wanflow.models.signature.identify`` names it) -> the table to official keys.
TO_OFFICIAL: dict[str, tuple[tuple[str, str], ...]] = {
    "official": (), "diffusers": DIFFUSERS_TO_OFFICIAL, "comfyui": COMFYUI_TO_OFFICIAL, "krea": KREA_TO_OFFICIAL,
}

#: A key present only in each layout, used to tell them apart.
LAYOUT_MARKERS: dict[str, str] = {
    "official": "patch_embedding.weight",
    "diffusers": "condition_embedder.time_proj.weight",
    "comfyui": COMFYUI_PREFIX + "patch_embedding.weight",
    "krea": KREA_PREFIX + "patch_embedding.weight",
}


def renamed_key(key: str, rules: Iterable[tuple[re.Pattern[str], str]]) -> str:
    """The first rule that matches the whole key renames it; no rule, no change (the loader's
    rule, shared with checks that read a checkpoint's header without torch)."""
    for rx, replacement in rules:
        match = rx.fullmatch(key)
        if match:
            return match.expand(replacement)
    return key
