"""Writing the family's weight files: official keys, a reduced dtype, byte-identical per seed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

#: What the family ships in: bf16 keeps fp32's range (fp16 would overflow large activations).
SHIP_DTYPE = torch.bfloat16


def save_weights(state: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype = SHIP_DTYPE) -> Path:
    """``state`` as a safetensors file, floating tensors cast to ``dtype``; parent folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in state.items()}
    save_file(tensors, str(path))
    return path


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (module initialisers draw from it) and return a private one."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
