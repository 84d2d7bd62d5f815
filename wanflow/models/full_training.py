"""What full fine-tuning trains of a DiT, by parameter name: one torch-free table.

A derivative DiT may train only its own parts when fully fine-tuned (the rest frozen, as its
authors and DiffSynth train it): Wan2.2-Animate its Animate parts, Video-As-Prompt its reference
stream. The model classes read their ``full_trained_prefixes`` from here, and the memory planner
reads the same rows against a checkpoint's header (before any model or torch loads), so what the
train step trains and what the plan sizes cannot drift apart. A DiT is the row's DiT when its
checkpoint holds a parameter under the row's prefixes; one no row matches trains every weight.
"""

from __future__ import annotations

from collections.abc import Iterable

from wanflow.models.vap_config import MOT_PREFIX

#: Wan2.2-Animate: its pose embedding, motion and face encoders and face blocks (DiffSynth's
#: ``--trainable_models animate_adapter``); the I2V DiT stays frozen.
ANIMATE_PARTS = ("pose_patch_embedding.", "motion_encoder.", "face_encoder.", "face_adapter.")
#: Video-As-Prompt: the reference stream alone (the authors' ``*_mot_ref`` parameters).
REFERENCE_STREAM = (MOT_PREFIX,)

#: Every DiT whose full fine-tuning trains parts alone, by the prefixes it trains.
TRAINED_ALONE = (ANIMATE_PARTS, REFERENCE_STREAM)

#: Stored tensors that are buffers, never trained: the motion encoder's fixed blur kernels.
BUFFER_SUFFIXES = (".kernel",)

#: The released Video-As-Prompt names mark the reference stream's modules with this suffix on
#: their first part (``blocks.4.attn1_mot_ref.to_q.weight``), where wanflow's put them under ``mot.``.
RELEASED_REFERENCE_SUFFIX = "_mot_ref"


def stream_name(name: str) -> str:
    """A parameter's name with a released reference-stream name moved under ``mot.`` (its block
    index kept: ``blocks.4.attn1_mot_ref.to_q.weight`` -> ``mot.blocks.4.attn1.to_q.weight``);
    enough to tell what trains and in which block, without the loader's full key table."""
    if RELEASED_REFERENCE_SUFFIX not in name or name.startswith(MOT_PREFIX):
        return name
    return MOT_PREFIX + name.replace(RELEASED_REFERENCE_SUFFIX, "", 1)


def trained_prefixes(names: Iterable[str]) -> tuple[str, ...]:
    """The prefixes full fine-tuning trains of the DiT whose parameters are ``names`` (wanflow's
    or the official names, see ``stream_name``); () when it trains every weight."""
    names = [stream_name(n) for n in names]
    return next((row for row in TRAINED_ALONE if any(n.startswith(row) for n in names)), ())


def trains(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether full fine-tuning trains the tensor ``name`` (``stream_name``'d) of a DiT that
    trains ``prefixes`` (``trained_prefixes``): under them (any, for ()) and not a buffer."""
    return (not prefixes or name.startswith(prefixes)) and not name.endswith(BUFFER_SUFFIXES)
