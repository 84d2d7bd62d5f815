"""Convert a bf16/fp32 DiT checkpoint into a scaled-fp8 one, shard by shard and tensor by tensor.

The files written keep every key of the source (its layout, its sharding, its shard names) and
add what the scaled-fp8 layout adds: each weight that wanflow stores in fp8 (``fp8.stores_fp8``)
becomes float8 e4m3fn with a float32 ``<name>.scale_weight`` beside it, and the first shard gets
the ``scaled_fp8`` marker (an empty e4m3fn tensor, as ComfyUI writes it). Everything else is
copied as it is. ``load_dit(..., storage="fp8")`` then reads the fp8 bytes without quantising.

Memory. A shard's header is planned from the source headers alone (shapes and dtypes), then its
tensors are produced one at a time, written and dropped: at any moment the process holds one
source tensor at its own precision and its fp8 copy, never a shard, let alone the model, in bf16.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import fp8, fp8_scaled, signature
from wanflow.models.checkpoint_files import (
    SAFETENSORS_DTYPES,
    capped,
    read_safetensors,
    read_sharded,
)
from wanflow.models.dit_keys import COMFYUI_PREFIX
from wanflow.models.dit_loader import TO_OFFICIAL, PathLike
from wanflow.models.loading import rename_keys
from wanflow.models.residency import place_all

log = structlog.get_logger(__name__)

#: torch dtype -> its safetensors name.
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}

#: One tensor of a file being written: key, dtype, shape.
Entry = tuple[str, torch.dtype, tuple[int, ...]]


def convert_to_fp8(
    src: PathLike | Sequence[PathLike], dst_dir: PathLike,
    granularity: fp8.Granularity = fp8.DEFAULT_GRANULARITY,
) -> list[Path]:
    """Write the scaled-fp8 form of a DiT checkpoint into ``dst_dir``; the files written.

    ``src``: a .safetensors file, a list of shards, a shard index json or a folder holding one.
    An index json is rewritten beside the shards and a ``config.json`` next to the source is
    copied, so ``dst_dir`` loads like the source folder. ``granularity="tensor"`` writes one
    scale per tensor: ComfyUI's own scaled-fp8 layout (it expects a 0-d scale).
    """
    fp8.fp8_dtype()
    shards, index = _shards(src)
    out_dir = Path(dst_dir)
    _check_targets(shards, out_dir)
    parts = {path: read_safetensors(path) for path in shards}  # mapped: nothing read yet
    merged = _merged(parts)
    quantised, marker = _plan_keys(merged, " + ".join(str(p) for p in shards))
    out_dir.mkdir(parents=True, exist_ok=True)
    written, weight_map = [], {}
    for number, (path, part) in enumerate(parts.items()):
        target = out_dir / path.name
        names = _convert_shard(part, target, quantised, granularity, marker if number == 0 else None)
        weight_map |= dict.fromkeys(names, path.name)
        written.append(target)
        log.info("fp8_shard_written", source=str(path), target=str(target),
                 quantised=len(quantised & set(part)))
    if index is not None:
        written.append(_write_index(out_dir / index.name, weight_map))
    config = (index or shards[0]).parent / "config.json"
    if config.is_file() and config.resolve() != (out_dir / "config.json").resolve():
        shutil.copyfile(config, out_dir / "config.json")
        written.append(out_dir / "config.json")
    return written


def _convert_shard(part: Mapping[str, Tensor], target: Path, quantised: set[str],
                   granularity: fp8.Granularity, marker: str | None) -> list[str]:
    """Write one converted shard; the keys it holds."""
    entries = _entries(part, quantised, granularity)
    if marker is not None:
        entries.append((marker, fp8.fp8_dtype(), (0,)))
    metadata = {"format": "pt", "scaled_fp8": fp8.FP8_DTYPE_NAME, "scale": granularity}
    write_safetensors(target, entries, _tensors(part, quantised, granularity, marker), metadata)
    return [name for name, _, _ in entries]


def _shards(src: PathLike | Sequence[PathLike]) -> tuple[list[Path], Path | None]:
    """The safetensors shards to convert, in order, and the index json naming them (if any)."""
    paths = [Path(src)] if isinstance(src, (str, os.PathLike)) else [Path(p) for p in src]
    if len(paths) == 1 and paths[0].is_dir():
        indexes = sorted(paths[0].glob("*.safetensors.index.json"))
        paths = indexes or sorted(paths[0].glob("*.safetensors"))
    if len(paths) == 1 and paths[0].name.endswith(".index.json"):
        read_sharded(paths[0])  # checks that every shard and key is there
        weight_map = json.loads(paths[0].read_text(encoding="utf-8"))["weight_map"]
        return [paths[0].parent / name for name in sorted(set(weight_map.values()))], paths[0]
    odd = [str(p) for p in paths if p.suffix != ".safetensors" or not p.is_file()]
    if odd or not paths:
        raise ModelLoadError(
            f"convert_to_fp8: {capped(odd) or 'nothing given'}: expected .safetensors files, a shard "
            "index json or a folder holding them (convert a .pth to safetensors first)."
        )
    return paths, None


def _check_targets(shards: Sequence[Path], out_dir: Path) -> None:
    """Each shard keeps its name in ``out_dir``: names must differ, and no source is overwritten."""
    names = [p.name for p in shards]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(f"convert_to_fp8: several shards are named {capped(twice)}; the "
                             "converted shards keep their names, so they must differ.")
    if any((out_dir / p.name).resolve() == p.resolve() for p in shards):
        raise ModelLoadError(f"convert_to_fp8: {out_dir} holds the source shards; write the fp8 "
                             "checkpoint into another folder.")


def _merged(parts: Mapping[Path, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Every shard's tensors in one dict; a key in two shards is an error."""
    merged: dict[str, Tensor] = {}
    for path, part in parts.items():
        twice = sorted(set(part) & set(merged))
        if twice:
            raise ModelLoadError(f"{path}: repeats keys of an earlier shard ({capped(twice)}); "
                                 "pass each shard once.")
        merged.update(part)
    return merged


def _plan_keys(state: Mapping[str, Tensor], source: str) -> tuple[set[str], str]:
    """The source keys to quantise, and the marker key (behind ComfyUI's prefix in such files)."""
    found = signature.identify(state)
    if found.kind != "dit":
        raise ModelLoadError(
            f"{source}: convert_to_fp8 converts Wan DiT checkpoints; this is {found.describe()}."
        )
    already = [k for k, t in state.items() if fp8.is_fp8(t.dtype)]
    if already:
        raise ModelLoadError(
            f"{source}: already holds fp8 tensors ({capped(already)}); it needs no conversion."
        )
    official = rename_keys({k: k for k in state}, TO_OFFICIAL[found.layout])  # official -> source key
    quantised = {key for name, key in official.items()
                 if fp8.stores_fp8(name) and state[key].ndim == 2 and state[key].is_floating_point()}
    prefix = COMFYUI_PREFIX if found.layout == "comfyui" else ""
    return quantised, prefix + fp8_scaled.MARKER


def _entries(
    part: Mapping[str, Tensor], quantised: set[str], granularity: fp8.Granularity,
) -> list[Entry]:
    """What a converted shard holds, in writing order: each fp8 weight followed by its scale."""
    entries: list[Entry] = []
    for key, tensor in part.items():
        if key in quantised:
            scale_shape = () if granularity == "tensor" else (tensor.shape[0], 1)
            entries += [(key, fp8.fp8_dtype(), tuple(tensor.shape)),
                        (fp8_scaled.scale_key(key), torch.float32, scale_shape)]
        else:
            entries.append((key, tensor.dtype, tuple(tensor.shape)))
    return entries


def _tensors(part: Mapping[str, Tensor], quantised: set[str], granularity: fp8.Granularity,
             marker: str | None) -> Iterator[tuple[str, Tensor]]:
    """The shard's tensors in ``_entries`` order, each read (and its file pages released) when needed."""
    for key, tensor in part.items():
        own = place_all({key: tensor}, None, None, borrowed=False)[key]
        if key in quantised:
            stored, scale = fp8.quantise(own, granularity)
            del own
            yield key, stored
            yield fp8_scaled.scale_key(key), scale
        else:
            yield key, own
    if marker is not None:
        yield marker, torch.empty(0, dtype=fp8.fp8_dtype())


def write_safetensors(path: Path, entries: Sequence[Entry], tensors: Iterable[tuple[str, Tensor]],
                      metadata: Mapping[str, str]) -> Path:
    """A safetensors file written tensor by tensor: the header from ``entries``, then each tensor.

    ``tensors`` yields exactly the entries, in order; only the one being written is in memory.
    The file appears under its name only once complete.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, dtype, shape in entries:
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for (name, dtype, shape), (got, tensor) in zip(entries, tensors, strict=True):
            if (got, tensor.dtype, tuple(tensor.shape)) != (name, dtype, shape):
                raise RuntimeError(f"write_safetensors: planned {name} {dtype} {shape}, got "
                                   f"{got} {tensor.dtype} {tuple(tensor.shape)}")
            f.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    os.replace(partial, path)
    return path


def _write_index(path: Path, weight_map: Mapping[str, str]) -> Path:
    """The shard index json naming every key's shard (scales beside their weights)."""
    path.write_text(json.dumps({"metadata": {"scaled_fp8": fp8.FP8_DTYPE_NAME},
                                "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return path
