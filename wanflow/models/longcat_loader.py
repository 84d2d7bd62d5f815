"""Load the LongCat-Video DiT from its released layout (``dit/`` shards + index), strictly.

The released folder holds ``config.json``, ``diffusion_pytorch_model-0000N-of-0000M.safetensors``
and ``diffusion_pytorch_model.safetensors.index.json``; the folder, the index, one single
safetensors file or a state dict are all accepted. The keys are LongCat's own and load with no
conversion; a file of another model (a Wan DiT above all, which shares the text encoder and VAE
of LongCat-Video) is refused, saying what it looks like. The model is built on the meta device
and the tensors are assigned one by one, each cast to its dtype (fp32 islands stay fp32).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import fp8_scaled, longcat_config, signature
from wanflow.models.checkpoint_files import (
    Checkpoint,
    merged_shards,
    open_weights,
)
from wanflow.models.json_file import read_json_object
from wanflow.models.loading import build_on_meta
from wanflow.models.longcat import LongCatDiT
from wanflow.models.longcat_config import LongCatConfig
from wanflow.models.storage_load import load_stored

log = structlog.get_logger(__name__)


def load_longcat_dit(
    weights: Checkpoint, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    attention_kernel: str = "sdpa", storage: str = "compute",
) -> LongCatDiT:
    """A ready LongCatDiT from the ``dit/`` folder, its index json, one safetensors file, or a
    state dict. The sizes come from the weights; ``text_tokens_zero_pad`` from the config.json
    beside them (True, the released value, when there is none). ``storage = "fp8"`` stores the
    blocks' projections in float8 e4m3 with one scale per row, as a Wan DiT's
    (``wanflow.models.fp8``; ``"fp8-matmul"`` multiplies them in fp8 too). Mismatches raise
    ModelLoadError."""
    opened = open_weights(weights)
    config = longcat_config_of(opened.state, opened.source)
    if not opened.borrowed:
        config = longcat_config_with_file_beside(config, Path(os.fspath(weights)))
    return _built(config, opened.state, opened.source, dtype, device, attention_kernel, opened.borrowed, storage)


def _built(config: LongCatConfig, state: Mapping[str, Tensor], source: str, dtype: torch.dtype,
           device: torch.device | str, attention_kernel: str, borrowed: bool = False,
           storage: str = "compute") -> LongCatDiT:
    """The model built on the meta device and loaded strictly from ``state`` (fp32 islands kept;
    the block projections in fp8 under an fp8 ``storage``)."""
    model = build_on_meta(lambda: LongCatDiT(config, attention_kernel))
    expected = f"LongCat-Video DiT ({config.describe()})"
    def dtypes(name: str) -> torch.dtype:
        return torch.float32 if longcat_config.keeps_fp32(name) else dtype

    load_stored(model, fp8_scaled.split_scales(state, source), storage, source=source, expected=expected, dtype=dtypes,
                device=device, borrowed=borrowed)
    log.debug("longcat_dit_loaded", source=source, hidden=config.hidden_size, depth=config.depth,
              dtype=str(dtype), zero_pad=config.text_tokens_zero_pad, storage=storage)
    return model


def longcat_config_of(state: Mapping[str, Tensor], source: str) -> LongCatConfig:
    """The config read off a state dict's shapes, refusing a file that is not LongCat-Video's."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if not longcat_config.is_longcat(shapes):
        raise ModelLoadError(
            f"{source}: expected a LongCat-Video DiT (keys x_embedder.*, t_embedder.*, "
            f"y_embedder.*, blocks.N.attn.qkv.*), but this looks like {signature.identify(state).describe()}. "
            "Point the component at LongCat-Video's dit/ folder (or its index json)."
        )
    return longcat_config.from_shapes(shapes, source)


def longcat_config_with_file_beside(config: LongCatConfig, path: Path) -> LongCatConfig:
    """Apply the config.json in the weights' folder, if there is one."""
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.is_file():
        log.info("longcat_config_default", source=str(path),
                 note="no config.json beside the weights; text_tokens_zero_pad = true (the released value)")
        return config
    doc = read_json_object(config_file)
    return longcat_config.with_config_json(config, doc, str(config_file))


# ----------------------------------------------------------------------------- the pool's row


def load(weights: Sequence[str | os.PathLike], dtype: torch.dtype = torch.float32,
         device: torch.device | str = "cpu", attention_kernel: str = "sdpa", storage: str = "compute") -> LongCatDiT:
    """The DiT from the shard files a family's component lists (the pool passes its tensor files),
    read as one checkpoint; the config.json beside them applies as ``load_longcat_dit`` reads it."""
    files = [Path(w) for w in weights]
    if len(files) == 1:
        return load_longcat_dit(files[0], dtype=dtype, device=device, attention_kernel=attention_kernel,
                                storage=storage)
    if not files:
        raise ModelLoadError("LongCat-Video DiT: no checkpoint file given; pass the shards, their index or dit/.")
    state = merged_shards(files)
    config = longcat_config_with_file_beside(longcat_config_of(state, str(files[0].parent)), files[0])
    return _built(config, state, ", ".join(str(f) for f in files), dtype, device, attention_kernel, storage=storage)

