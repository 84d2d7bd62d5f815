"""Tiny Krea Realtime in its real file layout, under a models root.

- ``krea/krea-realtime-video/krea-realtime-video-14b.safetensors``: one bf16 file holding a Wan
  T2V DiT's official keys behind ``model.``, and no config.json (the loader reads the architecture
  off the shapes, so the tiny DiT has heads of 128 as the real one has);
- ``Wan-AI/Wan2.1-T2V-14B``: the text encoder, tokenizer and VAE the family takes from there
  (``_layout`` writes it, with its own DiT).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

from tests.e2e._layout import tiny, write_models_root

REPO = "krea/krea-realtime-video"
FILE = "krea-realtime-video-14b.safetensors"


def krea_config() -> object:
    """A Wan T2V DiT 256 wide in 2 heads of 128 (head_dim 128: what a config-less file implies)."""
    return attrs.evolve(tiny.tiny_dit_config(), dim=256, num_heads=2)


def write_krea_repo(root: Path, seed: int = 30) -> Path:
    """The Krea file under ``root/krea/krea-realtime-video/``; returns its path."""
    state = {f"model.{k}": v.to(torch.bfloat16).contiguous() for k, v in tiny.dit_state(krea_config(), seed).items()}
    path = root / REPO / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_krea_models_root(root: Path) -> Path:
    """Wan-AI/Wan2.1-T2V-14B (encoders and VAE) and the Krea file."""
    write_models_root(root, ("wan2.1-t2v-14b",))
    write_krea_repo(root)
    return root
