"""A DiT loaded into block tiers under its storage: fp8 blocks stream as fp8, from host memory or disk.

A 14B DiT stored in fp8 is 14 GB: it fits neither a 12 GB card nor, with its activations, a 16 GB
one, so its blocks must stream, and streaming them as fp8 halves the bytes moved per step. Each
tier holds what the resident fp8 load (``fp8_scaled.load_scaled``) would put on the device, so a
streamed run reaches the same kernels with the same bytes:

- device and host tiers: loaded by ``load_scaled`` itself, tensor by tensor (a weight quantised
  alone, never a bf16 copy of the model); host-tier ones land in host memory, where
  `BlockPlacement` keeps them (pinned on CUDA) and copies them in as fp8.
- disk tier: the block's parameters stay meta placeholders. A scaled-fp8 file's fp8 bytes are
  read from the mapped views as they are. A bf16/fp32 file's weight is quantised again at each
  read (``convert``: ``fp8.quantised_with`` under the scale computed at load, the arithmetic
  ``fp8.quantise`` applies, so the bytes equal the resident load's); the file is read once at
  load for those scales (docs/fp8.md gives the cost of quantising at each read). An fp8 tensor
  the model computes in another dtype (a scaled file under ``storage = "compute"``, a layer
  wanflow does not store in fp8) is dequantised at each read as the resident load does once.

Scales are buffers: tiny (one float per row), they stay resident on the device whatever the tier.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from wanflow.models import fp8, fp8_scaled


def load_stored_placed(model: nn.Module, scaled: fp8_scaled.ScaledState, storage: str, tier_of: Callable[[str], str],
                       target: Callable[[str], torch.dtype], device: torch.device | str, source: str,
                       expected: str) -> dict[str, Callable[[Tensor], Tensor]]:
    """Load ``model`` (built on meta) from ``scaled`` (its mapped views, scales split off) under
    ``storage``, each tensor where ``tier_of`` its name puts it; the disk-tier weights' read
    conversions, for `BlockPlacement`'s ``convert``."""
    if storage not in fp8.STORAGES:
        raise ValueError(f"storage={storage!r}; expected one of {fp8.STORAGES}")
    in_fp8 = fp8.stores_in_fp8(storage)
    if in_fp8:
        fp8.require_fp8(device)
    where = {"device": device, "host": "cpu", "disk": None}
    fp8_scaled.load_scaled(model, scaled, source=source, expected=expected, dtype=target, device=device, borrowed=False,
                    fp8=in_fp8, placed_at=lambda key: where[tier_of(key)])
    if storage == "fp8-matmul":
        fp8.use_fp8_matmul(model, source)
    layers = {f"{name}.weight": layer for name, layer in fp8.fp8_layers(model).items()}
    convert = {}
    for key, view in scaled.weights.items():
        if tier_of(key) != "disk":
            continue
        file_scale = scaled.scales.get(key)
        if key in layers:
            if fp8.is_fp8(view.dtype):  # read as it is, in the file's own fp8 format
                _placeholder(model, key, view.dtype)
                continue
            scale = layers[key].scale_weight.detach().to("cpu", copy=True)
            convert[key] = partial(_quantised, scale=scale, file_scale=file_scale)
        elif file_scale is not None or fp8.is_fp8(view.dtype):
            convert[key] = partial(_dequantised, scale=file_scale, dtype=target(key))
    return convert


def _quantised(view: Tensor, *, scale: Tensor, file_scale: Tensor | None) -> Tensor:
    """A disk-tier fp8 layer's weight read from a bf16/fp32 file: the bytes the resident load stores."""
    if file_scale is not None:  # a scaled weight that is not fp8: quantise what it stands for
        view = fp8.dequantise(view, fp8.canonical_scale(file_scale), torch.float32)
    return fp8.quantised_with(view, scale)


def _dequantised(view: Tensor, *, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """A disk-tier fp8 tensor the model computes in ``dtype``: stored x scale, as the resident load."""
    own = fp8.canonical_scale(scale) if scale is not None else torch.ones(())
    return fp8.dequantise(view, own, dtype)


def _placeholder(model: nn.Module, key: str, dtype: torch.dtype) -> None:
    """Make a disk-tier placeholder carry the file's fp8 dtype (e5m2 files stay e5m2, as loaded whole)."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    param = module._parameters[name]
    if param.dtype != dtype:
        module._parameters[name] = nn.Parameter(torch.empty(param.shape, dtype=dtype, device="meta"),
                                                requires_grad=False)
