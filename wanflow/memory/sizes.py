"""What each component's weights take in memory, read off safetensors headers without torch.

A safetensors file begins with an 8-byte length and a JSON header giving every tensor's dtype
and shape, so the planner can size a 28 GB DiT from a few kilobytes, before anything loads and
without importing torch. Sizes are at the dtype the weights will be *stored* in once loaded
(the compute dtype, with the DiT's fp32 islands kept in fp32), not the file's dtype: a bf16
model loaded from an fp32 file takes half the file's bytes.

DiT blocks are recognised by a ``blocks.N.`` segment in the key, which the official, diffusers
and ComfyUI (``model.diffusion_model.blocks.N.``) layouts all share.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs

from wanflow.errors import ModelLoadError

#: safetensors dtype names -> bytes per element.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
#: Bytes of one per-row scale of fp8 storage (an fp32 per output row).
FP8_SCALE_BYTES = 4


@attrs.frozen
class TensorInfo:
    """One tensor of a checkpoint header: its safetensors dtype name and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@attrs.frozen
class ComponentSize:
    """A component's weight bytes once loaded; a DiT's split into its blocks and the rest.

    ``fp8_*`` are the same sizes with the block matrices stored as float8 (one byte per element
    plus one fp32 scale per row), so the planner can say whether fp8 storage would fit. The scales
    are buffers that stay on the device while fp8 blocks stream (``memory.fp8_placed``), so they
    count outside ``fp8_block_bytes``, with the non-block bytes.
    """

    name: str
    weight_bytes: int
    block_bytes: tuple[int, ...] = ()  # DiT blocks in execution order; () = moved as one piece
    largest_tensor_bytes: int = 0  # what a tensor-by-tensor load holds in passing
    fp8_weight_bytes: int | None = None  # None: fp8 storage is not offered for this component
    fp8_block_bytes: tuple[int, ...] = ()

    @property
    def non_block_bytes(self) -> int:
        """Weights outside the blocks (embeddings, head): resident whenever the DiT runs."""
        return self.weight_bytes - sum(self.block_bytes)

    def as_fp8(self) -> ComponentSize:
        """The same component stored in fp8 (itself when fp8 is not offered)."""
        if self.fp8_weight_bytes is None:
            return self
        return attrs.evolve(self, weight_bytes=self.fp8_weight_bytes, block_bytes=self.fp8_block_bytes,
                            fp8_weight_bytes=None, fp8_block_bytes=())


#: A safetensors header larger than this is not one (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 2**20


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """name -> (dtype, shape) of every tensor of one safetensors file, from its JSON header alone
    (no torch, no tensor data): what planning reads, a fully cached rerun included.

    Planning asks several times for the same shards (sizes, shapes, variant recognition); each
    file is parsed once per (size, modification time), so a rewritten file is read again."""
    path = Path(path)
    st = path.stat()
    return dict(_parsed_header(str(path.resolve()), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=256)
def _parsed_header(path_text: str, size: int, mtime_ns: int) -> dict[str, TensorInfo]:
    """``read_header``'s work for one version of a file (the cache key is its size and mtime)."""
    path = Path(path_text)
    with path.open("rb") as f:
        prefix = f.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
            raise ModelLoadError(f"{path}: not a complete safetensors file ({size} bytes; its header "
                                 "does not fit): download it again")
        raw = f.read(length)
    try:
        header = json.loads(raw)
        return {name: TensorInfo(str(entry["dtype"]), tuple(int(n) for n in entry["shape"]))
                for name, entry in header.items() if name != "__metadata__"}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{path}: cannot read a safetensors header ({err!r:.120}); the file is "
                             "corrupt: download it again") from None


def read_headers(paths: Iterable[str | os.PathLike]) -> dict[str, TensorInfo]:
    """Every tensor of several shards (the ``.safetensors`` files among ``paths``)."""
    out: dict[str, TensorInfo] = {}
    for path in paths:
        if Path(path).suffix == ".safetensors":
            out.update(read_header(path))
    return out


def stored_bytes(info: TensorInfo, itemsize: int) -> int:
    """Bytes a tensor takes at ``itemsize`` per element (integer tensors keep their own)."""
    size = itemsize if info.dtype in _FLOATING else DTYPE_BYTES[info.dtype]
    return info.numel * size


def block_index(name: str) -> int | None:
    """N of a ``blocks.N.`` key, else None."""
    found = _BLOCK.search(name)
    return int(found.group(1)) if found else None


def component_size(
    name: str, tensors: Mapping[str, TensorInfo], itemsize: int, *,
    keeps_fp32: Callable[[str], bool] = lambda key: False, blocks: bool = False,
) -> ComponentSize:
    """Bytes of a component's tensors stored at ``itemsize`` (``keeps_fp32`` ones at 4).

    ``blocks``: split by ``blocks.N.`` (the DiT), and offer fp8 sizes for the block matrices.
    """
    per_block: dict[int, int] = {}
    fp8_per_block: dict[int, int] = {}
    total = largest = scales = 0
    for key, info in tensors.items():
        size = stored_bytes(info, 4 if keeps_fp32(key) else itemsize)
        total, largest = total + size, max(largest, size)
        index = block_index(key) if blocks else None
        if index is not None:
            per_block[index] = per_block.get(index, 0) + size
            fp8 = len(info.shape) == 2 and info.dtype in _FLOATING and not keeps_fp32(key)
            fp8_per_block[index] = fp8_per_block.get(index, 0) + (info.numel if fp8 else size)
            scales += info.shape[0] * FP8_SCALE_BYTES if fp8 else 0
    order = sorted(per_block)
    block_bytes = tuple(per_block[i] for i in order)
    fp8_blocks = tuple(fp8_per_block[i] for i in order)
    fp8_total = total - sum(block_bytes) + sum(fp8_blocks) + scales if blocks else None
    return ComponentSize(name, total, block_bytes, largest, fp8_total, fp8_blocks if blocks else ())


def dit_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """Official parameter name -> shape of a DiT's safetensors shards, from their headers alone
    (any supported layout renamed to the official keys): what a LoRA is checked against at planning."""
    import re

    from wanflow.models.dit_keys import LAYOUT_MARKERS, TO_OFFICIAL

    state = read_headers(Path(f) for f in files if Path(f).suffix == ".safetensors")
    table = TO_OFFICIAL[next((layout for layout, marker in LAYOUT_MARKERS.items()  # diffusers names
                              if layout != "official" and marker in state), "official")]  # patch_embedding too
    rules = [(re.compile(pattern), replacement) for pattern, replacement in table]

    def official(name: str) -> str:
        for rx, replacement in rules:
            match = rx.fullmatch(name)
            if match:
                return match.expand(replacement)
        return name

    return {official(name): entry.shape for name, entry in state.items()}
