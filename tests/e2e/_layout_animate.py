"""A tiny Wan2.2-Animate-14B repository in its real layout, under a models root.

``Wan-AI/Wan2.2-Animate-14B/``: the DiT with its animate parts (pose embedding, motion and face
encoders, face blocks) under the released names in ``diffusion_pytorch_model-0000N-of-00004
.safetensors`` shards behind their index, with ``config.json``; ``models_t5_umt5-xxl-enc-bf16.pth``,
``google/umt5-xxl/``, ``Wan2.1_VAE.pth``, the CLIP ``.pth``; and ``relighting_lora.ckpt``, a torch
pickle whose ``state_dict`` holds peft LoRA factors for the blocks' linear layers, as released.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch

from tests.e2e._layout import CLIP_FILE, _link, tiny, write_shards, write_shared
from wanflow.models.animate import AnimateDiT
from wanflow.models.animate_config import AnimateConfig, MotionEncoderConfig
from wanflow.models.animate_motion import blur_kernel
from wanflow.models.loading import build_on_meta

REPO = "Wan-AI/Wan2.2-Animate-14B"
SHARDS = 4
#: The face crop size of the tiny motion encoder (the release: 512).
FACE_SIZE = 16
LORA_RANK = 4


def tiny_animate_config() -> AnimateConfig:
    """The tiny I2V DiT with 5 blocks (one face block, after block 0), a 16-px motion encoder."""
    dit = attrs.evolve(tiny.tiny_dit_config("i2v", 36, 16, clip=True), num_layers=5)
    motion = MotionEncoderConfig(size=FACE_SIZE, widths=(8, 16, 16), style_dim=32, motion_dim=6, direction_dim=32)
    return AnimateConfig(dit, motion, face_hidden_dim=24, face_heads=4)


def animate_state(cfg: AnimateConfig, seed: int) -> dict[str, torch.Tensor]:
    """Released-name weights: randn·0.1 (norms near 1), the motion encoder's weights randn (its
    layers scale them by 1/√fan_in at run time), the blur kernels the fixed ones."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: AnimateDiT(cfg)).state_dict().items()}
    state = tiny._seeded(shapes, seed, 0.1)
    for key in state:
        if key.endswith(".kernel"):
            state[key] = blur_kernel()
        elif key.startswith("motion_encoder.enc.") and key.endswith(".weight"):
            state[key] = state[key] * 10
    return state


def relighting_state(cfg: AnimateConfig, seed: int) -> dict[str, torch.Tensor]:
    """peft factors (no alpha: scale 1) for every block's attention and FFN linear layers."""
    g = torch.Generator().manual_seed(seed)
    d = cfg.dit
    out = {}
    for i in range(d.num_layers):
        for name, (fan_out, fan_in) in {"self_attn.q": (d.dim, d.dim), "self_attn.o": (d.dim, d.dim),
                                        "cross_attn.k_img": (d.dim, d.dim), "ffn.0": (d.ffn_dim, d.dim)}.items():
            stem = f"base_model.model.blocks.{i}.{name}"
            out[f"{stem}.lora_A.weight"] = torch.randn(LORA_RANK, fan_in, generator=g) * 0.2
            out[f"{stem}.lora_B.weight"] = torch.randn(fan_out, LORA_RANK, generator=g) * 0.2
    return out


def write_relighting(path: Path, seed: int) -> Path:
    torch.save({"state_dict": relighting_state(tiny_animate_config(), seed)}, path)
    return path


def write_animate_repo(root: Path, seed: int = 40) -> Path:
    """The repository folder: the sharded DiT, its encoders, VAE and the relighting LoRA."""
    cfg = tiny_animate_config()
    folder = root / REPO
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(tiny.dit_config_json(cfg.dit), indent=2))
    state = {k: v.contiguous() for k, v in animate_state(cfg, seed).items()}
    write_shards(folder, state, SHARDS)
    shared = root / ".shared"
    for name, src in {"models_t5_umt5-xxl-enc-bf16.pth": "umt5.pth", "google/umt5-xxl": "tokenizer",
                      "Wan2.1_VAE.pth": "wan2.1.pth", CLIP_FILE: "clip.pth"}.items():
        _link(shared / src, folder / name)
    write_relighting(folder / "relighting_lora.ckpt", seed + 1)
    return folder


def write_animate_models_root(root: Path) -> Path:
    """The shared encoders and the Animate release."""
    write_shared(root / ".shared")
    write_animate_repo(root)
    return root
