"""Loaded models kept in-process by (files, dtype, device), so the jobs of a sweep share them.

Loading a DiT first releases every other DiT (A14B keeps one expert resident at a time) and the
encoders (their outputs are cached steps; denoising needs the memory more).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog


log = structlog.get_logger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

_POOL: dict[tuple, Any] = {}


def weight_files(files: Sequence[Path]) -> list[Path]:
    """The tensor files among a component's files (index json, config.json and the like left out)."""
    return [Path(f) for f in files if Path(f).suffix in WEIGHT_SUFFIXES]


def clear() -> None:
    """Release every pooled model (tests, and callers that need the memory back)."""
    _POOL.clear()


def _stamp(*paths: Path) -> tuple:
    """Each file's path, size and mtime: a file replaced on disk is loaded again."""
    return tuple((str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths)


def _get(key: tuple, load: Callable[[], Any]) -> Any:
    if key not in _POOL:
        _POOL[key] = load()
    return _POOL[key]


def dit(files: Sequence[Path], dtype: Any, device: str, attention: str) -> Any:
    """A WanDiT; other DiTs (the other A14B expert) and the encoders are released first."""
    from wanflow.models.dit_loader import load_dit

    key = ("dit", _stamp(*files), str(dtype), device, attention)
    for other in [k for k in _POOL if k[0] in ("dit", "text_encoder", "image_encoder") and k != key]:
        log.info("model_released", kind=other[0], files=[f for f, _, _ in other[1]])
        del _POOL[other]
    return _get(key, lambda: load_dit(weight_files(files), dtype=dtype, device=device,
                                      attention_kernel=attention).eval().requires_grad_(False))


def text_encoder(path: Path, tokenizer_dir: Path, dtype: Any, device: str) -> Any:
    """The umT5 encoder and its tokenizer."""
    from wanflow.models.text_encoder import TextEncoder

    key = ("text_encoder", _stamp(path), str(tokenizer_dir), str(dtype), device)
    return _get(key, lambda: TextEncoder.from_checkpoint(path, tokenizer_dir, dtype=dtype, device=device))


def image_encoder(path: Path, dtype: Any, device: str) -> Any:
    """The CLIP vision tower of Wan2.1 I2V/FLF2V."""
    from wanflow.models.image_encoder import ImageEncoder

    key = ("image_encoder", _stamp(path), str(dtype), device)
    return _get(key, lambda: ImageEncoder.from_checkpoint(path, dtype=dtype, device=device))


def vae(path: Path, version: str, dtype: Any, device: str) -> Any:
    """A Wan VAE of the family's version (widths other than the released ones are read off the file)."""
    from wanflow.models.vae.loader import load_vae

    key = ("vae", _stamp(path), version, str(dtype), device)
    return _get(key, lambda: load_vae(path, version, dtype=dtype, device=device))
