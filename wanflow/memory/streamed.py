"""Load a DiT straight into a placement: disk-tier blocks are never read at load time.

Loading a 28 GB DiT and then dropping most of it would need the 28 GB first. Here the model is
built on the meta device, the checkpoint is mapped (views, nothing read), and only the weights
outside disk-tier blocks are read, cast and moved, tensor by tensor (`wanflow.models.residency`):
resident ones straight to the compute device, host-tier ones to host memory. Disk-tier blocks
keep meta placeholders that carry their compute dtype; `BlockPlacement` reads them when they run.
Under fp8 storage, or from a scaled-fp8 file, the blocks load and stream in their stored form
(``fp8_placed``): the resident fp8 model's bytes, whichever tier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.memory.fp8_placed import load_stored_placed
from wanflow.memory.mapped import map_safetensors
from wanflow.memory.placement import BlockPlacement
from wanflow.models.checkpoint_files import open_state_dict
from wanflow.models.dit import WanDiT, keeps_fp32
from wanflow.models.dit_config import DitConfig
from wanflow.models.dit_loader import official_state
from wanflow.models.fp8 import is_fp8, stores_in_fp8
from wanflow.models.fp8_scaled import split_scales
from wanflow.models.loading import build_on_meta, mismatch_report
from wanflow.models.residency import place_all


def open_dit_views(paths: Sequence[str | os.PathLike]) -> dict[str, Tensor]:
    """Official name -> view of the mapped file(s), whatever the layout; nothing is read.

    safetensors files are mapped read-only (`mapped.map_safetensors`), so a file larger than
    RAM plus swap maps too; other formats go through the loaders' reader.
    """
    return official_state(mapped_shards(paths), ", ".join(str(p) for p in paths))


def mapped_shards(paths: Sequence[str | os.PathLike]) -> dict[str, Tensor]:
    """The files' tensors as one state dict of views (safetensors mapped, nothing read); a key in
    two files is refused (a shard passed twice, or two checkpoints mixed up)."""
    state: dict[str, Tensor] = {}
    for path in paths:
        part = map_safetensors(path) if str(path).endswith(".safetensors") else open_state_dict(path)
        twice = sorted(set(part) & set(state))
        if twice:
            raise ModelLoadError(f"{path}: repeats keys of an earlier file ({twice[:4]}); pass each shard once.")
        state.update(part)
    return state


def load_placed_dit(
    paths: Sequence[str | os.PathLike], config: DitConfig | None, tiers: Sequence[str],
    dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
    attention_kernel: str = "sdpa", storage: str = "compute", deferred: bool = False,
) -> tuple[WanDiT, BlockPlacement | None]:
    """A WanDiT whose blocks sit in ``tiers`` (see `BlockPlacement`), and the placement's handle;
    ``storage`` as `dit_loader.load_dit`'s (fp8 blocks stream as fp8: ``memory.fp8_placed``).
    ``config`` None reads it as ``load_dit`` does (``config_beside``: a derivative's parts
    included); ``deferred`` as ``placed_variant``'s (no handle then)."""
    from wanflow.models.dit_loader import config_beside

    views = open_dit_views(paths)
    config = config if config is not None else config_beside(Path(paths[0]), views)
    model = build_on_meta(lambda: WanDiT(config, attention_kernel)).set_compute_dtype(dtype)
    source = ", ".join(map(str, paths))

    def target(name: str) -> torch.dtype:
        return torch.float32 if keeps_fp32(name) else dtype

    placed_variant(model, views, target, tiers, device, source, "the Wan DiT config", storage, deferred)
    return model, getattr(model, "placement", None)


# ----------------------------------------------------------------------------- the DiT variants


@attrs.frozen
class Tiered:
    """What a placement needs of a model loaded for ``tiers`` but not placed yet (``deferred``):
    the checkpoint's views its disk tier reads, and their read conversions (``fp8_placed``)."""

    tiers: tuple[str, ...]
    device: torch.device | str
    checkpoint: Mapping[str, Tensor]
    convert: Mapping[str, Callable[[Tensor], Tensor]]


def placed_variant(model: Any, views: Mapping[str, Tensor], target: Callable[[str], torch.dtype],
                   tiers: Sequence[str], device: torch.device | str, source: str, expected: str,
                   storage: str = "compute", deferred: bool = False) -> Any:
    """A variant's ``model`` (built on meta) loaded from the mapped ``views`` into ``tiers``
    (``load_tiered``), its hooks on ``model.placement``. ``deferred`` (a LoRA's frozen base,
    placed once its adapter exists: ``memory.train_placement``): no hooks yet, ``model.tiered``
    (``Tiered``) holds what the placement will need."""
    checkpoint, convert = load_tiered(model, views, target, tiers, device, source, expected, storage)
    if deferred:
        model.tiered = Tiered(tuple(tiers), device, checkpoint, convert)
        return model.requires_grad_(False)
    model.placement = BlockPlacement(model.eval().requires_grad_(False), tiers, device,
                                     checkpoint=checkpoint, convert=convert)
    return model


def load_tiered(model: Any, views: Mapping[str, Tensor], target: Callable[[str], torch.dtype],
                tiers: Sequence[str], device: torch.device | str, source: str, expected: str,
                storage: str = "compute") -> tuple[Mapping[str, Tensor], dict[str, Callable[[Tensor], Tensor]]]:
    """Load ``model`` (built on meta) from the mapped ``views`` for ``tiers``, with no placement yet:
    device-tier blocks and everything outside ``model.blocks`` (the side modules: Animate's face
    blocks and encoders, S2V's audio injectors and encoder) on ``device``, host-tier blocks in
    host memory, disk-tier blocks left on meta. ``target`` is each tensor's dtype by name (the
    variant's fp32 islands). ``storage`` (``fp8.STORAGES``) and a scaled-fp8 file go through
    ``fp8_placed.load_stored_placed``. Returns what a placement (generation's `BlockPlacement`,
    training's ``TrainPlacement`` once the adapter exists) reads disk-tier blocks with: the
    checkpoint's views and their read conversions."""
    if len(tiers) != len(model.blocks):
        raise ValueError(f"expected {len(model.blocks)} tiers, one per block of {expected}, got {list(tiers)}")
    for name, param in model.named_parameters():  # disk-tier placeholders carry the dtype they are read at
        if not is_fp8(param.dtype):
            param.data = param.data.to(target(name))

    def tier_of(name: str) -> str:
        return tiers[int(name.split(".")[1])] if name.startswith("blocks.") else "device"

    scaled = split_scales(views, source)
    if stores_in_fp8(storage) or scaled.quantised:
        convert = load_stored_placed(model, scaled, storage, tier_of, target, device, source, expected)
        return scaled.weights, convert
    report = mismatch_report(model.state_dict(keep_vars=True), views)
    if report:
        raise ModelLoadError(f"{source}: does not fit {expected}:\n{report}")
    for tier, where in (("device", device), ("host", "cpu")):
        part = {k: v for k, v in views.items() if tier_of(k) == tier}
        model.load_state_dict(place_all(part, target, where, borrowed=False), strict=False, assign=True)
    return views, {}


def _safetensors(weights: Sequence[str | os.PathLike], name: str) -> list[Path]:
    files = [Path(w) for w in weights if str(w).endswith(".safetensors")]
    if not files:
        raise ModelLoadError(f"{name} DiT: no safetensors shard given to place its blocks from.")
    return files


def load_placed_longcat(weights: Sequence[str | os.PathLike], tiers: Sequence[str], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", attention_kernel: str = "sdpa",
                        storage: str = "compute", deferred: bool = False) -> Any:
    """LongCat-Video's DiT with its blocks in the memory plan's ``tiers`` (``placed_variant``, as
    ``deferred`` there)."""
    from wanflow.models import longcat_config
    from wanflow.models.longcat import LongCatDiT
    from wanflow.models.longcat_loader import (
        longcat_config_of,
        longcat_config_with_file_beside,
    )

    files = _safetensors(weights, "LongCat-Video")
    views = mapped_shards(files)
    source = ", ".join(str(f) for f in files)
    config = longcat_config_with_file_beside(longcat_config_of(views, source), files[0])
    model = build_on_meta(lambda: LongCatDiT(config, attention_kernel))

    def target(name: str) -> torch.dtype:
        return torch.float32 if longcat_config.keeps_fp32(name) else dtype

    return placed_variant(model, views, target, tiers, device, source, f"LongCat-Video DiT ({config.describe()})",
                          storage, deferred)


def load_placed_animate(weights: Sequence[str | os.PathLike], tiers: Sequence[str], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu", attention_kernel: str = "sdpa",
                        storage: str = "compute", deferred: bool = False) -> Any:
    """The Wan2.2-Animate DiT with its blocks in the memory plan's ``tiers`` (``placed_variant``);
    its face blocks run after their DiT blocks from the device, as its encoders do."""
    from wanflow.models import animate_config
    from wanflow.models.animate import AnimateDiT
    from wanflow.models.animate_loader import animate_dtypes, official_state

    files = _safetensors(weights, "Wan2.2-Animate")
    source = ", ".join(str(f) for f in files)
    views = official_state(mapped_shards(files), source)  # renamed views: still nothing read
    config = animate_config.from_shapes({k: tuple(v.shape) for k, v in views.items()}, source)
    model = build_on_meta(lambda: AnimateDiT(config, attention_kernel))
    expected = f"Wan2.2 Animate DiT ({animate_config.describe(config)})"
    return placed_variant(model, views, animate_dtypes(dtype), tiers, device, source, expected, storage, deferred)


def load_placed_s2v(weights: Sequence[str | os.PathLike], tiers: Sequence[str], dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu", attention_kernel: str = "sdpa",
                    storage: str = "compute", deferred: bool = False) -> Any:
    """The Wan2.2-S2V DiT with its blocks in the memory plan's ``tiers`` (``placed_variant``); its
    audio injectors run after their blocks from the device, as its audio encoder, frame packer and
    pose encoder do."""
    from wanflow.models import s2v_config, signature
    from wanflow.models.s2v import S2VDiT
    from wanflow.models.s2v_loader import require_s2v, s2v_fields_beside

    files = _safetensors(weights, "Wan2.2 S2V")
    source = ", ".join(str(f) for f in files)
    _, views = signature.unprefixed(mapped_shards(files))  # ComfyUI's prefix off: still nothing read
    require_s2v(views, source)
    config = s2v_config.from_shapes({k: tuple(v.shape) for k, v in views.items()}, source,
                                    **s2v_fields_beside(files[0]))
    model = build_on_meta(lambda: S2VDiT(config, attention_kernel))

    def target(name: str) -> torch.dtype:
        return torch.float32 if s2v_config.keeps_fp32(name) else dtype

    return placed_variant(model, views, target, tiers, device, source, f"Wan2.2 S2V DiT ({config.describe()})",
                          storage, deferred)
