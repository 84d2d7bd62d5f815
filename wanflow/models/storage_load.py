"""Loading a DiT built on the meta device under its storage choice, one rule for every loader.

A DiT's blocks are stored as the checkpoint gives them or as ``[memory].fp8`` asks
(``fp8.STORAGES``): "compute" keeps the compute dtype; "fp8" stores the blocks' projections in
float8 e4m3 with one scale per row; "fp8-matmul" also multiplies them in fp8. A checkpoint that
is itself scaled fp8 goes through the fp8 path whatever the storage (its layers are dequantised
unless fp8 is asked for). The Wan DiT's loader and each variant's (LongCat-Video, Wan2.2-Animate,
Wan2.2-S2V) load through ``load_stored``, so the rule cannot drift between them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from wanflow.models import fp8, fp8_scaled
from wanflow.models.loading import load_state_into


def load_stored(model: nn.Module, scaled: fp8_scaled.ScaledState, storage: str, *, source: str, expected: str,
                dtype: Callable[[str], torch.dtype], device: torch.device | str, borrowed: bool) -> None:
    """Load ``scaled`` (``fp8_scaled.split_scales`` of the checkpoint) into ``model`` under ``storage``;
    ``dtype`` gives each tensor's compute dtype by name (the model's fp32 islands)."""
    if storage not in fp8.STORAGES:
        raise ValueError(f"storage={storage!r}; expected one of {fp8.STORAGES}")
    in_fp8 = fp8.stores_in_fp8(storage)
    if in_fp8 or scaled.quantised:
        if in_fp8:
            fp8.require_fp8(device)
        fp8_scaled.load_scaled(model, scaled, source=source, expected=expected, dtype=dtype, device=device,
                        borrowed=borrowed, fp8=in_fp8)
        if storage == "fp8-matmul":
            fp8.use_fp8_matmul(model, source)
    else:
        load_state_into(model, scaled.weights, source=source, expected=expected, device=device, dtype=dtype,
                        borrowed=borrowed)
