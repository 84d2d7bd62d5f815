"""Which DiT variant a checkpoint holds, told from its tensor names alone, without torch.

The DiT variant table (``wanflow.memory.dit_variants``) asks these of a family's DiT files: when
the model pool loads them, and when the memory plan decides whether a DiT's blocks may stream.
Planning runs on every run, a fully cached rerun included, which never imports torch; so the
tests live here, over the names a safetensors header lists, apart from the loaders (which need
torch), and the memory plan's sizing asks them too.
"""

from __future__ import annotations

from collections.abc import Collection

from wanflow.models import longcat_config, s2v_config, signature
from wanflow.models.full_training import ANIMATE_PARTS, RELEASED_REFERENCE_SUFFIX
from wanflow.models.vap_config import MOT_PREFIX


def holds_reference_stream(names: Collection[str]) -> bool:
    """A Video-As-Prompt DiT: released ``*_mot_ref`` names or wanflow's ``mot.`` ones."""
    return any(RELEASED_REFERENCE_SUFFIX in k or k.startswith(MOT_PREFIX) for k in names)


def holds_s2v_parts(names: Collection[str]) -> bool:
    """A Wan2.2-S2V DiT (its audio injection, motion and frame-packing parts)."""
    _, unprefixed = signature.unprefixed(dict.fromkeys(names))
    return s2v_config.is_s2v(unprefixed)


def holds_longcat_dit(names: Collection[str]) -> bool:
    """A LongCat-Video DiT: every one of its marker keys."""
    return all(key in names for key in longcat_config.MARKER_KEYS)


def holds_animate_parts(names: Collection[str]) -> bool:
    """A Wan2.2-Animate DiT: its pose embedding, motion and face encoders or face blocks, in any
    supported layout (ComfyUI's prefix off)."""
    return any(k.removeprefix(signature.COMFYUI_PREFIX).startswith(ANIMATE_PARTS) for k in names)
