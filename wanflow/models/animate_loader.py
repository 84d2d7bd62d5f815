"""Load a Wan2.2-Animate DiT from its official, diffusers or ComfyUI checkpoint, strictly.

An Animate checkpoint is recognised by its parts' keys (``pose_patch_embedding.*``,
``motion_encoder.*``, ``face_encoder.*``, ``face_adapter.*``), whichever layout names them;
every size is read off the shapes (``animate_config.from_shapes``). The model is built on the
meta device and each tensor assigned to it on its way to the device, as ``dit_loader`` does:
the blur kernels of the official file included, the QR direction basis kept in fp32. Under an
fp8 ``storage`` the blocks' projections are stored in float8 e4m3 with one scale per row, as a Wan
DiT's (``wanflow.models.fp8``); the Animate parts (face blocks, encoders) keep the compute dtype.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import animate_config, animate_keys, fp8_scaled, signature
from wanflow.models.animate import DIRECTION_KEY, AnimateDiT
from wanflow.models.checkpoint_files import (
    Checkpoint,
    merged_shards,
    open_weights,
)
from wanflow.models.dit_config import keeps_fp32
from wanflow.models.dit_keys import DIFFUSERS_TO_OFFICIAL, LAYOUT_MARKERS
from wanflow.models.loading import (
    build_on_meta,
    rename_keys,
    require_parts,
)
from wanflow.models.storage_load import load_stored

log = structlog.get_logger(__name__)


def load_animate_dit(
    weights: Checkpoint, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    attention_kernel: str = "sdpa", storage: str = "compute",
) -> AnimateDiT:
    """A ready AnimateDiT from a checkpoint file, a sharded index or its folder, or a state dict.

    It computes in ``dtype`` except its fp32 islands (the DiT's, the motion direction basis and
    the blur kernels). ``storage = "fp8"`` stores the blocks' projections in fp8 (``"fp8-matmul"``
    multiplies them in fp8 too). A file that is not an Animate checkpoint raises ModelLoadError
    saying what it looks like instead."""
    opened = open_weights(weights)
    state = official_state(opened.state, opened.source)
    config = animate_config.from_shapes({k: tuple(v.shape) for k, v in state.items()}, opened.source)
    model = build_on_meta(lambda: AnimateDiT(config, attention_kernel))
    expected = f"Wan2.2 Animate DiT ({animate_config.describe(config)})"
    load_stored(model, fp8_scaled.split_scales(state, opened.source), storage, source=opened.source, expected=expected,
                dtype=animate_dtypes(dtype), device=device, borrowed=opened.borrowed)
    log.debug("animate_dit_loaded", source=opened.source, dim=config.dit.dim, dtype=str(dtype), storage=storage)
    return model


def official_state(state: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Any supported layout of an Animate checkpoint under the official keys."""
    _, state = signature.unprefixed(state)  # ComfyUI's prefix off; the layout is told below
    require_animate(state, source)
    if LAYOUT_MARKERS["diffusers"] not in state:
        return dict(state)
    dit = rename_keys({k: v for k, v in state.items() if not animate_keys.is_part(k)}, DIFFUSERS_TO_OFFICIAL)
    parts = animate_keys.to_official({k: v for k, v in state.items() if animate_keys.is_part(k)}, source)
    return dit | parts


def require_animate(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse a checkpoint without Animate's parts (saying what it is) or with only some of them."""
    require_parts(state, animate_keys.PART_PREFIXES, source, "Wan2.2 Animate",
                  "Point the Animate DiT at Wan2.2-Animate-14B's diffusion_pytorch_model*.safetensors.")


def animate_dtypes(dtype: torch.dtype):
    """Each tensor's dtype by name: fp32 for the fp32 islands, ``dtype`` for the rest."""
    def choose(name: str) -> torch.dtype:
        fp32 = keeps_fp32(name) or name == DIRECTION_KEY or name.endswith(".kernel")
        return torch.float32 if fp32 else dtype
    return choose


def load_animate_files(weights: Sequence[str | os.PathLike], dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu", attention_kernel: str = "sdpa",
                       storage: str = "compute") -> AnimateDiT:
    """``load_animate_dit`` over a family component's shard files (as the model pool lists them):
    one file as it is, several merged (a key in two shards is refused)."""
    if len(weights) == 1:
        return load_animate_dit(weights[0], dtype=dtype, device=device, attention_kernel=attention_kernel,
                                storage=storage)
    if not weights:
        raise ModelLoadError("load_animate_files: no checkpoint file given; pass the Animate DiT's shards.")
    state = merged_shards(weights)
    return load_animate_dit(state, dtype=dtype, device=device, attention_kernel=attention_kernel, storage=storage)
