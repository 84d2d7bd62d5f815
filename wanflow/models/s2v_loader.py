"""Load the Wan2.2-S2V DiT from its released layout (sharded safetensors + index), strictly.

The release's root folder holds ``config.json`` and ``diffusion_pytorch_model-0000N-of-0000M
.safetensors`` with their ``.index.json`` (beside the T5, VAE and wav2vec2 files); the folder,
the index, one safetensors file (ComfyUI's repackaged single file included) or a state dict are
accepted. The keys are the official ones and load with no conversion. Every size is read off the
shapes (``s2v_config.from_shapes``); the heads and the audio injectors' blocks come from the
config.json beside the weights, or are the release's. A file of another model (a Wan T2V DiT
above all, which S2V's shares all its base keys with) is refused, saying what it looks like. Under
an fp8 ``storage`` the blocks' projections are stored in float8 e4m3 with one scale per row, as a
Wan DiT's (``wanflow.models.fp8``); the audio injectors and encoders keep their dtypes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import fp8_scaled, s2v_config, signature
from wanflow.models.checkpoint_files import (
    Checkpoint,
    OpenedWeights,
    merged_shards,
    open_weights,
)
from wanflow.models.json_file import read_json_object
from wanflow.models.loading import build_on_meta, require_parts
from wanflow.models.s2v import S2VDiT
from wanflow.models.storage_load import load_stored

log = structlog.get_logger(__name__)


def load_s2v_dit(
    weights: Checkpoint, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    attention_kernel: str = "sdpa", storage: str = "compute",
) -> S2VDiT:
    """A ready S2VDiT from the release folder, its index json, one safetensors file, or a state
    dict. It computes in ``dtype`` except its fp32 islands (the DiT's and the audio encoder);
    ``storage = "fp8"`` stores the blocks' projections in fp8 (``"fp8-matmul"`` multiplies them in
    fp8 too). A file that is not an S2V checkpoint raises ModelLoadError saying what it looks like
    instead."""
    opened = open_weights(weights)
    fields = {} if opened.borrowed else s2v_fields_beside(Path(os.fspath(weights)))
    return _built(opened, fields, dtype, device, attention_kernel, storage)


def load_s2v_shards(weights: Sequence[str | os.PathLike], dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu", attention_kernel: str = "sdpa",
                    storage: str = "compute") -> S2VDiT:
    """``load_s2v_dit`` for the shard files themselves, as a family's component lists them (the
    model pool's variant entry); the config.json beside the first shard gives the heads and blocks."""
    if not weights:
        raise ModelLoadError("load_s2v_shards: no checkpoint file given; pass the shards, their index or a folder.")
    if len(weights) == 1:
        return load_s2v_dit(weights[0], dtype, device, attention_kernel, storage)
    state = merged_shards(weights)
    opened = OpenedWeights(state, ", ".join(str(w) for w in weights), borrowed=False)
    return _built(opened, s2v_fields_beside(Path(os.fspath(weights[0]))), dtype, device, attention_kernel, storage)


def _built(opened: OpenedWeights, fields: dict[str, Any], dtype: torch.dtype, device: torch.device | str,
           attention_kernel: str, storage: str = "compute") -> S2VDiT:
    """The model of an opened checkpoint, sized by its shapes and ``fields`` (the config.json's)."""
    _, state = signature.unprefixed(opened.state)  # ComfyUI's prefix off
    require_s2v(state, opened.source)
    config = s2v_config.from_shapes({k: tuple(v.shape) for k, v in state.items()}, opened.source, **fields)
    model = build_on_meta(lambda: S2VDiT(config, attention_kernel))
    expected = f"Wan2.2 S2V DiT ({config.describe()})"

    def dtypes(name: str) -> torch.dtype:
        return torch.float32 if s2v_config.keeps_fp32(name) else dtype

    load_stored(model, fp8_scaled.split_scales(state, opened.source), storage, source=opened.source, expected=expected,
                dtype=dtypes, device=device, borrowed=opened.borrowed)
    log.debug("s2v_dit_loaded", source=opened.source, dim=config.dit.dim, layers=config.dit.num_layers,
              inject_layers=list(config.inject_layers), dtype=str(dtype), storage=storage)
    return model


def require_s2v(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse a checkpoint without S2V's parts (saying what it is) or with only some of them."""
    require_parts(state, s2v_config.PART_PREFIXES, source, "Wan2.2 S2V",
                  "Point the S2V DiT at Wan2.2-S2V-14B's diffusion_pytorch_model*.safetensors (or their index json).")


def s2v_fields_beside(path: Path) -> dict[str, Any]:
    """What the config.json in the weights' folder says of the heads and the injector blocks;
    {} where there is none (the release's)."""
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.is_file():
        log.info("s2v_config_default", source=str(path),
                 note="no config.json beside the weights; heads of 128 and the released injector blocks")
        return {}
    doc = read_json_object(config_file)
    return s2v_config.config_fields(doc, str(config_file))
