"""Tiny Wan-Fun and speed-control repositories in their real ModelScope layouts, under a models root.

- ``PAI/Wan2.1-Fun-*``: one bf16 ``diffusion_pytorch_model.safetensors`` with ``config.json``,
  ``models_t5_umt5-xxl-enc-bf16.pth``, ``Wan2.1_VAE.pth`` and the CLIP ``.pth``;
- ``PAI/Wan2.2-Fun-A14B-*``: ``high_noise_model/`` and ``low_noise_model/`` each holding six
  ``diffusion_pytorch_model-0000N-of-00006-bf16.safetensors`` shards (no index) and ``config.json``,
  plus the umT5 and the Wan2.1 VAE (no CLIP);
- ``DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1/model.safetensors``: the motion controller alone,
  beside the base ``Wan-AI/Wan2.1-T2V-1.3B`` that ``_layout`` writes (with the shared tokenizer).

The Fun 1.3B InP DiTs are 1536 wide (one block): a Wan2.1 I2V file of the 1.3B width is what
tells Fun InP 1.3B apart, and the families check it.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

from tests.e2e._layout import CLIP_FILE, _link, tiny, write_models_root

EXPERTS = ("high_noise_model", "low_noise_model")
SPEED_REPO = "DiffSynth-Studio/Wan2.1-1.3b-speedcontrol-v1"


def _config(kind: str) -> object:
    """The tiny DiT of a Fun kind (its in_dim, CLIP and derivative parts as released)."""
    i2v = tiny.tiny_dit_config("i2v", 36, 16, clip=True)
    return {
        "inp-1.3b": attrs.evolve(i2v, dim=1536, num_heads=12, num_layers=1),
        "inp": i2v,
        "control": attrs.evolve(i2v, in_dim=48),
        "v1.1-control": attrs.evolve(i2v, in_dim=48, ref_conv=True),
        "v1.1-control-camera": attrs.evolve(i2v, in_dim=32, camera_in_dim=24),
        "a14b-inp": attrs.evolve(i2v, clip=False),
        "a14b-control": attrs.evolve(i2v, in_dim=52, clip=False, ref_conv=True),
        "a14b-control-camera": attrs.evolve(i2v, clip=False, camera_in_dim=24),
    }[kind]


#: family -> (repository under PAI/, tiny DiT kind).
REPOS = {
    "wan2.1-fun-1.3b-inp": ("Wan2.1-Fun-1.3B-InP", "inp-1.3b"),
    "wan2.1-fun-14b-inp": ("Wan2.1-Fun-14B-InP", "inp"),
    "wan2.1-fun-1.3b-control": ("Wan2.1-Fun-1.3B-Control", "control"),
    "wan2.1-fun-14b-control": ("Wan2.1-Fun-14B-Control", "control"),
    "wan2.1-fun-v1.1-1.3b-inp": ("Wan2.1-Fun-V1.1-1.3B-InP", "inp-1.3b"),
    "wan2.1-fun-v1.1-14b-inp": ("Wan2.1-Fun-V1.1-14B-InP", "inp"),
    "wan2.1-fun-v1.1-1.3b-control": ("Wan2.1-Fun-V1.1-1.3B-Control", "v1.1-control"),
    "wan2.1-fun-v1.1-14b-control": ("Wan2.1-Fun-V1.1-14B-Control", "v1.1-control"),
    "wan2.1-fun-v1.1-1.3b-control-camera": ("Wan2.1-Fun-V1.1-1.3B-Control-Camera", "v1.1-control-camera"),
    "wan2.1-fun-v1.1-14b-control-camera": ("Wan2.1-Fun-V1.1-14B-Control-Camera", "v1.1-control-camera"),
    "wan2.2-fun-a14b-inp": ("Wan2.2-Fun-A14B-InP", "a14b-inp"),
    "wan2.2-fun-a14b-control": ("Wan2.2-Fun-A14B-Control", "a14b-control"),
    "wan2.2-fun-a14b-control-camera": ("Wan2.2-Fun-A14B-Control-Camera", "a14b-control-camera"),
}


def _bf16_state(kind: str, seed: int) -> dict[str, torch.Tensor]:
    return {k: v.to(torch.bfloat16).contiguous() for k, v in tiny.dit_state(_config(kind), seed).items()}


def _write_dit(folder: Path, kind: str, seed: int, shards: int) -> None:
    """One bf16 file, or ``shards`` ``-bf16`` shards without an index (the Wan2.2-Fun layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(tiny.dit_config_json(_config(kind)), indent=2))
    state = _bf16_state(kind, seed)
    if shards == 1:
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
        return
    keys = sorted(state)
    for i in range(shards):
        save_file({k: state[k] for k in keys[i::shards]},
                  str(folder / f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}-bf16.safetensors"))


def write_fun_repo(root: Path, family: str) -> None:
    repo, kind = REPOS[family]
    folder, shared = root / "PAI" / repo, root / ".shared"
    if family.startswith("wan2.2"):
        for i, expert in enumerate(EXPERTS):
            _write_dit(folder / expert, kind, seed=20 + i, shards=6)
    else:
        _write_dit(folder, kind, seed=20, shards=1)
        _link(shared / "clip.pth", folder / CLIP_FILE)
    _link(shared / "umt5.pth", folder / "models_t5_umt5-xxl-enc-bf16.pth")
    _link(shared / "wan2.1.pth", folder / "Wan2.1_VAE.pth")


def motion_controller_state(dim: int, seed: int) -> dict[str, torch.Tensor]:
    """linear.{0,2,4} of a controller for a DiT of width ``dim`` (randn·0.1: not the no-op init)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"linear.0": (dim, 256), "linear.2": (dim, dim), "linear.4": (6 * dim, dim)}
    out = {}
    for name, shape in shapes.items():
        out[f"{name}.weight"] = torch.randn(shape, generator=g) * 0.1
        out[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return out


def add_fun_repos(root: Path) -> Path:
    """Every Fun repository and the speed-control controller, added to a models root that
    ``_layout`` wrote (its ``.shared`` encoders and Wan2.1-T2V-1.3B are reused)."""
    for family in REPOS:
        write_fun_repo(root, family)
    dim = tiny.tiny_dit_config().dim
    (root / SPEED_REPO).mkdir(parents=True)
    save_file(motion_controller_state(dim, 5), str(root / SPEED_REPO / "model.safetensors"))
    return root


def write_fun_models_root(root: Path) -> Path:
    """The base Wan2.1-T2V-1.3B (tokenizer, speed control's base), every Fun repository and the
    speed-control controller."""
    return add_fun_repos(write_models_root(root, ("wan2.1-t2v-1.3b",)))
