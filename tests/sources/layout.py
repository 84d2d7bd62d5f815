"""Tiny stand-ins for the official Wan repositories: the real file names, whole (checkable) files."""

from __future__ import annotations

import fnmatch
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

DIT = "diffusion_pytorch_model"
TOKENIZER = ("special_tokens_map.json", "spiece.model", "tokenizer.json", "tokenizer_config.json")


def write_shards(folder: Path, count: int) -> list[str]:
    """``count`` safetensors shards and their index json, as diffusers writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    names, weight_map, total = [], {}, 0
    for i in range(1, count + 1):
        name = f"{DIT}-{i:05d}-of-{count:05d}.safetensors" if count > 1 else f"{DIT}.safetensors"
        tensors = {f"blocks.{i}.self_attn.q.weight": np.full((4, 4), i, dtype=np.float32)}
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))
        total += 64
        names.append(name)
    if count > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / f"{DIT}.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 16}))
    return names


def write_pth(path: Path) -> None:
    """A torch zip checkpoint's container (the checks read the zip, never unpickle)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/data/0", bytes(256))


def shared_files(root: Path, vae: str = "Wan2.1_VAE.pth") -> None:
    write_pth(root / "models_t5_umt5-xxl-enc-bf16.pth")
    write_pth(root / vae)
    tok = root / "google" / "umt5-xxl"
    tok.mkdir(parents=True)
    for name in TOKENIZER:
        (tok / name).write_text("{}" if name.endswith(".json") else "sentencepiece")


def t2v_14b(root: Path, shards: int = 2) -> Path:
    """Wan-AI/Wan2.1-T2V-14B: sharded DiT with index, T5, VAE, tokenizer folder."""
    write_shards(root, shards)
    shared_files(root)
    (root / "README.md").write_text("# Wan2.1")
    return root


def a14b(root: Path) -> Path:
    """Wan-AI/Wan2.2-T2V-A14B: two experts in high_noise_model/ and low_noise_model/."""
    write_shards(root / "high_noise_model", 2)
    write_shards(root / "low_noise_model", 2)
    shared_files(root)
    return root


def t2v_1_3b(root: Path) -> Path:
    """Wan-AI/Wan2.1-T2V-1.3B: one DiT file, no index."""
    write_shards(root, 1)
    shared_files(root)
    return root


class FakeHub:
    """A download function that copies from fixture repositories and records every call."""

    def __init__(self, repos: dict[str, Path], fail: Exception | None = None, truncate: str = ""):
        self.repos, self.fail, self.truncate = repos, fail, truncate
        self.calls: list[dict] = []

    def __call__(self, model_id, *, revision, local_dir, allow_patterns, ignore_patterns=None):
        self.calls.append({"repo": model_id, "revision": revision, "allow": list(allow_patterns),
                           "ignore": list(ignore_patterns or []), "local_dir": local_dir})
        if self.fail is not None:
            raise self.fail
        src = self.repos[model_id]
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            name = path.relative_to(src).as_posix()
            if any(fnmatch.fnmatch(name, a) for a in allow_patterns) and not any(
                    fnmatch.fnmatch(name, i) for i in ignore_patterns or []):
                self._copy(path, Path(local_dir) / name, name)
        return local_dir

    def _copy(self, path: Path, dest: Path, name: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if name == self.truncate:
            dest.write_bytes(path.read_bytes()[:40])  # an interrupted transfer
        else:
            shutil.copyfile(path, dest)
