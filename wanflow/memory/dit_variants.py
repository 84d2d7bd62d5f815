"""The DiTs that are more than the Wan DiT, told apart by their files' headers, each with its loader.

A family's DiT component is loaded through one pool entry point (``ModelPool.dit``); which model
class its files hold is read off the safetensors headers (tensor names only, no data), never off
a file name. Each row names the module that recognises and loads one variant: a new variant is
one row here and one loader module, not a branch in the pool. A file no row recognises is a
plain Wan DiT (``dit_loader.load_dit``), which may be placed in tiers and stored in fp8.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from wanflow.errors import ModelInputError


@attrs.frozen
class DitVariant:
    """One DiT variant: how its headers look and how it loads.

    ``recognises`` names a function of ``names_module`` (``wanflow.models.dit_names``: torch-free,
    since planning asks it on every run, a cached rerun included) that takes the tensor names of
    every shard; ``load``
    names a function of ``module``, ``load(weights, dtype=, device=, attention_kernel=)``, that
    returns the model. Variants load whole: ``streams`` and ``fp8`` say whether the memory policy may stream
    its blocks and whether ``[memory].fp8`` applies (its ``load`` then takes ``storage=``, one of
    ``fp8.STORAGES``)."""

    name: str
    module: str
    recognises: str
    load: str
    streams: bool = False
    fp8: bool = False
    names_module: str = "wanflow.models.dit_names"
    #: With ``streams``: the function of ``placed_module`` that loads it into the plan's block tiers,
    #: ``load_placed(weights, tiers, dtype=, device=, attention_kernel=)`` (the model's
    #: ``placement`` holds the hooks), with ``storage=`` too when ``fp8``: its fp8 blocks stream.
    load_placed: str = ""
    placed_module: str = "wanflow.memory.streamed"
    #: The class name of its transformer block: the unit FSDP shards and gathers one at a time
    #: (accelerate's ``TRANSFORMER_BASED_WRAP`` finds the class by this name in the loaded model).
    shard_unit: str = "Block"

    def function(self, attribute: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), attribute)

    def recogniser(self) -> Callable[[Any], bool]:
        return getattr(importlib.import_module(self.names_module), self.recognises)


#: In the order they are tried; the first that recognises the headers loads the file.
VARIANTS: tuple[DitVariant, ...] = (
    DitVariant("Video-As-Prompt", "wanflow.models.vap_loader", "holds_reference_stream", "load_vap_dit"),
    DitVariant("Wan2.2 S2V", "wanflow.models.s2v_loader", "holds_s2v_parts", "load_s2v_shards", streams=True,
               fp8=True, load_placed="load_placed_s2v",
               shard_unit="S2VBlock"),  # wanflow.models.s2v.S2VBlock: a Block with segment timesteps
    DitVariant("LongCat-Video", "wanflow.models.longcat_loader", "holds_longcat_dit", "load", streams=True, fp8=True,
               load_placed="load_placed_longcat", shard_unit="Block"),  # wanflow.models.longcat.Block
    DitVariant("Wan2.2-Animate", "wanflow.models.animate_loader", "holds_animate_parts", "load_animate_files",
               streams=True, fp8=True, load_placed="load_placed_animate"),
)


#: The Wan DiT's transformer block (``wanflow.models.dit.Block``), what FSDP shards of a plain Wan DiT.
WAN_SHARD_UNIT = "Block"


def shard_unit(weights: Sequence[Path]) -> str:
    """The class name of the transformer block of the DiT ``weights`` hold (its variant's, or the
    Wan DiT's): what a distributed run's FSDP wraps, one unit per block."""
    variant = variant_of(weights)
    return WAN_SHARD_UNIT if variant is None else variant.shard_unit


def variant_of(weights: Sequence[Path], variants: Sequence[DitVariant] = VARIANTS) -> DitVariant | None:
    """The variant whose DiT ``weights`` hold, from their safetensors headers; None for the Wan DiT."""
    from wanflow.memory.sizes import read_headers

    shards = [Path(w) for w in weights if Path(w).suffix == ".safetensors"]
    if not shards:
        return None
    names: Mapping[str, Any] = read_headers(shards)
    return next((v for v in variants if v.recogniser()(names)), None)


def load_variant(variant: DitVariant, weights: Sequence[Path], dtype: Any, device: str, attention: str,
                 storage: str, tiers: Sequence[str]) -> Any:
    """``variant``'s model, loaded whole or (``tiers``, a variant that ``streams``) into the plan's
    block tiers; refused with the setting to change when the memory plan streams its blocks or
    ``[memory].fp8`` is on and the variant cannot."""
    if tiers and not variant.streams:
        raise ModelInputError(f"{variant.name}: blocks streamed by the memory policy are not supported yet; "
                              "raise [memory].limit_gb (or set [memory].policy) so the DiT fits whole")
    if storage != "compute" and not variant.fp8:
        raise ModelInputError(f"{variant.name}: [memory].fp8 is not supported yet; set fp8 = false")
    if tiers and variant.load_placed:
        placed = getattr(importlib.import_module(variant.placed_module), variant.load_placed)
        extra = {"storage": storage} if variant.fp8 else {}  # its blocks stream in fp8 (memory.fp8_placed)
        return placed(list(weights), tiers, dtype=dtype, device=device, attention_kernel=attention, **extra)
    extra = {"storage": storage} if variant.fp8 else {}  # its loader stores the block projections in fp8
    return variant.function(variant.load)(list(weights), dtype=dtype, device=device, attention_kernel=attention,
                                          **extra)
