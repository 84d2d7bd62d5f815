"""Tiny weights in the exact ModelScope layouts of the official Wan repositories, under a models root.

``write_models_root(root)`` lays out every official family as ``root/Wan-AI/<repo>/…`` with the
real file names (sharded ``diffusion_pytorch_model-0000N-of-0000M.safetensors`` with their index,
``config.json``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``Wan2.1_VAE.pth``/``Wan2.2_VAE.pth``,
``google/umt5-xxl/``, ``models_clip_…pth``, ``high_noise_model/``, ``low_noise_model/``), so the
real families run end to end with ``WANFLOW_MODELS=root`` and no network.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import attrs
import torch
from safetensors.torch import save_file

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_weights.py"
_spec = importlib.util.spec_from_file_location("make_tiny_weights", _SCRIPT)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


@attrs.frozen
class Repo:
    """One official repository: its DiT variant, shards, expert folders, VAE and CLIP."""

    name: str
    dit: tuple[str, int, int, bool]  # model_type, in_dim, out_dim, clip
    shards: int = 2
    experts: tuple[str, ...] = ("",)  # sub-folders holding a DiT each
    vae: str = "wan2.1"
    clip: bool = False


T2V, I2V, FLF2V = ("t2v", 16, 16, False), ("i2v", 36, 16, True), ("flf2v", 36, 16, True)
EXPERTS = ("high_noise_model", "low_noise_model")
REPOS = {
    "wan2.1-t2v-1.3b": Repo("Wan2.1-T2V-1.3B", T2V, shards=1),
    "wan2.1-t2v-14b": Repo("Wan2.1-T2V-14B", T2V),
    "wan2.1-i2v-14b-480p": Repo("Wan2.1-I2V-14B-480P", I2V, clip=True),
    "wan2.1-i2v-14b-720p": Repo("Wan2.1-I2V-14B-720P", I2V, clip=True),
    "wan2.1-flf2v-14b-720p": Repo("Wan2.1-FLF2V-14B-720P", FLF2V, clip=True),
    "wan2.2-t2v-a14b": Repo("Wan2.2-T2V-A14B", T2V, experts=EXPERTS),
    "wan2.2-i2v-a14b": Repo("Wan2.2-I2V-A14B", ("i2v", 36, 16, False), experts=EXPERTS),
    "wan2.2-ti2v-5b": Repo("Wan2.2-TI2V-5B", ("ti2v", 48, 48, False), vae="wan2.2"),
}


def write_dit(folder: Path, cfg, seed: int, shards: int) -> None:
    """``diffusion_pytorch_model[-0000N-of-0000M].safetensors`` (+ index when sharded) and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in tiny.dit_state(cfg, seed).items()}
    (folder / "config.json").write_text(json.dumps(tiny.dit_config_json(cfg), indent=2))
    if shards == 1:
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
        return
    write_shards(folder, state, shards)


def write_shards(folder: Path, state: dict, shards: int, stem: str = "diffusion_pytorch_model") -> None:
    """``state`` as ``shards`` safetensors files named as diffusers and the Wan releases name them,
    keys dealt out in turn, and the index json that maps each key to its file."""
    keys, weight_map = sorted(state), {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, str(folder / name))
        weight_map |= {k: name for k in part}
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_repo(folder: Path, repo: Repo, shared: Path) -> None:
    """One repository; encoders and VAEs are hard links to ``shared`` copies (same bytes, less disk)."""
    model_type, in_dim, out_dim, clip = repo.dit
    cfg = tiny.tiny_dit_config(model_type, in_dim, out_dim, clip)
    for i, sub in enumerate(repo.experts):
        write_dit(folder / sub if sub else folder, cfg, seed=10 + i, shards=repo.shards)
    links = {"models_t5_umt5-xxl-enc-bf16.pth": "umt5.pth", "google/umt5-xxl": "tokenizer",
             f"Wan{repo.vae[3:]}_VAE.pth": f"{repo.vae}.pth"}
    if repo.clip:
        links[CLIP_FILE] = "clip.pth"
    for name, src in links.items():
        _link(shared / src, folder / name)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        dst.mkdir(exist_ok=True)
        for f in src.iterdir():
            os.link(f, dst / f.name)
    else:
        os.link(src, dst)


def write_shared(shared: Path) -> None:
    """The encoders, tokenizer and VAEs every repository holds (official ``.pth`` pickles)."""
    shared.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.to(torch.bfloat16) for k, v in tiny.umt5_state(1).items()}, shared / "umt5.pth")
    torch.save({k: v.half() for k, v in tiny.clip_state(3).items()}, shared / "clip.pth")
    for version, cfg in tiny.TINY_VAE.items():
        torch.save(tiny.vae_state(cfg, 2), shared / f"{version}.pth")
    tiny.write_tokenizer(shared / "tokenizer")


def write_models_root(root: Path, families: tuple[str, ...] = tuple(REPOS)) -> Path:
    """Every (or the named) official family's repository under ``root/Wan-AI/``."""
    write_shared(root / ".shared")
    for family in families:
        write_repo(root / "Wan-AI" / REPOS[family].name, REPOS[family], root / ".shared")
    return root
