"""Reading checkpoint files into {name: tensor} without copying them.

safetensors files are memory-mapped privately and sliced into views (nothing is read until a
tensor is used; safetensors' own reader copies each tensor, hence this header parser); shards
are read through their index json or folder; `.pth` files go through
``torch.load(mmap=True, weights_only=True)``, and a pickle that needs code is refused with a
conversion command. Model loaders also take tensors already in memory (a state dict), checked
the same way (`open_weights`). What happens to the tensors next is `wanflow.models.loading`'s
business.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import structlog
import torch
from torch import Tensor

from wanflow.errors import ModelLoadError
from wanflow.models import signature

log = structlog.get_logger(__name__)

#: safetensors dtype names -> torch dtypes (the format's own spelling).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}

#: Wrapper keys some trainers put around a state dict; unwrapped when they are the only key.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state")

#: How many keys each list of a mismatch report shows before "... and N more".
REPORT_CAP = 8

_CONVERT_HINT = (
    "If you trust the file, convert it once to safetensors (this runs its pickled code):\n"
    "  python -c \"import torch, safetensors.torch as st; sd = torch.load('{path}', "
    "map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); "
    "st.save_file({{k: v.detach().clone().contiguous() for k, v in sd.items()}}, "
    "'{stem}.safetensors')\"\n"
    "and point wanflow at the .safetensors file."
)


#: What a model loader takes: a checkpoint file (or shard index, or folder), or a state dict.
Checkpoint = str | os.PathLike | Mapping[str, Tensor]


@attrs.frozen
class OpenedWeights:
    """A checkpoint's tensors, what to call it in messages, and whether the tensors are the caller's.

    The caller's tensors (``borrowed``) are copied into the model, never aliased or released, so
    the model and the caller's dict never change each other.
    """

    state: dict[str, Tensor]
    source: str
    borrowed: bool


def open_weights(checkpoint: Checkpoint) -> OpenedWeights:
    """A file read lazily (`open_state_dict`), or a state dict checked to map names to tensors."""
    if isinstance(checkpoint, Mapping):
        source = f"the state dict passed in ({len(checkpoint)} entries)"
        return OpenedWeights(tensor_dict(checkpoint, source), source, borrowed=True)
    return OpenedWeights(open_state_dict(checkpoint), str(checkpoint), borrowed=False)


def merged_shards(paths: Sequence[str | os.PathLike]) -> dict[str, Tensor]:
    """Several shard files read lazily as one state dict; a key in two shards is refused (a
    shard passed twice, or two checkpoints mixed up)."""
    state: dict[str, Tensor] = {}
    for path in paths:
        part = open_state_dict(path)
        twice = sorted(set(part) & set(state))
        if twice:
            raise ModelLoadError(f"{path}: repeats keys of an earlier shard ({twice[:4]}); pass each shard once.")
        state.update(part)
    return state


def open_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint lazily (mmap), whatever its format, refusing anything that is not one."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory; check the path.")
    if path.is_dir():
        return _open_directory(path)
    kind, description = signature.sniff_file(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind in ("torch-zip", "torch-legacy"):
        return read_torch(path, legacy=kind == "torch-legacy")
    if kind == "json" and path.name.endswith(".index.json"):
        return read_sharded(path)
    raise ModelLoadError(
        f"{path}: not a checkpoint: it is {description}. Expected a .safetensors file, "
        "a sharded set's *.safetensors.index.json (or the folder holding it), or a PyTorch "
        ".pth/.pt/.ckpt file."
    )


def _open_directory(path: Path) -> dict[str, Tensor]:
    """A folder is a sharded set (its one index json) or holds exactly one .safetensors file."""
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return read_sharded(indexes[0])
    if len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise ModelLoadError(f"{path}: holds several shard indexes ({names}); name one of them.")
    singles = sorted(path.glob("*.safetensors"))
    if len(singles) == 1:
        return read_safetensors(singles[0])
    listing = ", ".join(sorted(p.name for p in path.iterdir())[:REPORT_CAP]) or "nothing"
    raise ModelLoadError(
        f"{path}: a folder with no *.safetensors.index.json and not exactly one .safetensors "
        f"file (it holds: {listing}); name the checkpoint file itself."
    )


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Map a safetensors file privately and return views into it: nothing is copied or read."""
    header, data_start = _safetensors_header(path)
    size = path.stat().st_size
    storage = torch.UntypedStorage.from_file(str(path), False, size)
    flat = torch.empty(0, dtype=torch.uint8).set_(storage)  # (file bytes,)
    return {
        name: _view(flat, data_start, entry)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """Parse and check the header, so that a truncated file fails before any tensor is used."""
    size = path.stat().st_size
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if 8 + length > size:
            raise _truncated(path, 8 + length, size, "its header")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"{path}: corrupt safetensors header ({err}); download it again.")
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object).")
    ends = [_entry_end(path, k, e) for k, e in header.items() if k != "__metadata__"]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise _truncated(path, needed, size, "its tensors")
    return header, 8 + length


def _entry_end(path: Path, name: str, entry: object) -> int:
    """Where a tensor's bytes end, after checking its entry is self-consistent."""
    try:
        begin, end = entry["data_offsets"]
        count = math.prod(entry["shape"]) * SAFETENSORS_DTYPES[entry["dtype"]].itemsize
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(
            f"{path}: corrupt safetensors header: bad entry for {name!r} ({entry!r:.120})."
        ) from None
    if end - begin != count or begin < 0:
        raise ModelLoadError(
            f"{path}: corrupt safetensors header: {name!r} spans {end - begin} bytes, "
            f"its shape and dtype need {count}."
        )
    return end


def _truncated(path: Path, needed: int, size: int, what: str) -> ModelLoadError:
    """The error for a file cut short, which is almost always an interrupted download or copy."""
    return ModelLoadError(
        f"{path}: truncated safetensors file: {what} need {needed:,} bytes but the file holds "
        f"only {size:,}. The download or copy was probably interrupted; fetch the file again."
    )


def _view(flat: Tensor, start: int, entry: Mapping) -> Tensor:
    """One tensor as a view of the mapped bytes (a copy only if the file misaligns it)."""
    dtype = SAFETENSORS_DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    raw = flat[start + begin : start + end]  # (nbytes,)
    if (start + begin) % dtype.itemsize:
        raw = raw.clone()
    return raw.view(dtype).reshape(entry["shape"])


def read_torch(path: Path, *, legacy: bool = False) -> dict[str, Tensor]:
    """torch.load with weights_only (never runs pickled code) and mmap where the format allows."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as err:
        detail = str(err).splitlines()[0][:200]
        stem = path.with_suffix("")
        raise ModelLoadError(
            f"{path}: refused: this file needs to run pickled Python code to load ({detail}). "
            "wanflow only loads .pth files with torch.load(weights_only=True).\n"
            + _CONVERT_HINT.format(path=path, stem=stem)
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ModelLoadError(
            f"{path}: unreadable PyTorch checkpoint, probably truncated or corrupt "
            f"({str(err).splitlines()[0][:200]}); fetch the file again."
        ) from None
    if legacy:
        log.warning("legacy_torch_format", path=str(path), note="read into memory, not mmap")
    return tensor_dict(obj, path)


def tensor_dict(obj: object, path: Path | str) -> dict[str, Tensor]:
    """Unwrap a lone wrapper key and insist that what remains maps names to tensors."""
    if isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in WRAPPER_KEYS:
        obj = next(iter(obj.values()))
    if not isinstance(obj, Mapping):
        raise ModelLoadError(
            f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to "
            "tensors); save `model.state_dict()` instead of the model object."
        )
    odd = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if odd:
        raise ModelLoadError(
            f"{path}: not a plain state dict: entries {capped(odd)} are not tensors. Save only "
            "the model's state_dict (no optimizer, step counters or config)."
        )
    return dict(obj)


def read_sharded(index: Path) -> dict[str, Tensor]:
    """Merge the shards an index json names, checking that every shard and key is there."""
    weight_map = _weight_map(index)
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise ModelLoadError(
            f"{index}: names {len(shards)} shards but {len(missing)} are missing from "
            f"{index.parent}: {capped(missing)}. Download the missing shards."
        )
    state: dict[str, Tensor] = {}
    for shard in shards:
        part = open_state_dict(index.parent / shard)
        _check_shard(index, shard, part, weight_map, state)
        state.update(part)
    return state


def _weight_map(index: Path) -> dict[str, str]:
    """The index's key -> shard-file table, validated."""
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{index}: not valid JSON ({err}); fetch the index again.") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(
            f"{index}: a JSON file without a 'weight_map' of key -> shard file, so not a "
            "safetensors shard index."
        )
    return weight_map


def _check_shard(
    index: Path, shard: str, part: Mapping[str, Tensor], weight_map: Mapping[str, str],
    seen: Mapping[str, Tensor],
) -> None:
    """A shard must hold the keys its index promises and no key another shard already gave."""
    absent = [k for k, s in weight_map.items() if s == shard and k not in part]
    if absent:
        raise ModelLoadError(
            f"{index}: shard {shard} lacks {len(absent)} keys the index puts there "
            f"({capped(absent)}); the shard set is mixed or incomplete."
        )
    twice = [k for k in part if k in seen]
    if twice:
        raise ModelLoadError(f"{index}: keys appear in more than one shard: {capped(twice)}.")


def capped(items: Sequence[str]) -> str:
    """A comma list of at most REPORT_CAP items, saying how many more there are."""
    shown = ", ".join(items[:REPORT_CAP])
    return shown + (f", ... and {len(items) - REPORT_CAP} more" if len(items) > REPORT_CAP else "")
