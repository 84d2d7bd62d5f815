"""Advice to the kernel about the pages of a tensor that views a memory-mapped checkpoint.

``WILLNEED`` starts reading a range into the page cache without waiting (the read-ahead of the
next block); ``DONTNEED`` drops a range from this process's resident memory. Checkpoints are
mapped privately and never written (`wanflow.models.checkpoint_files`), so a dropped page is
read again from the file if it is ever touched: dropping is always safe, and is what keeps a
streamed model's resident memory at about one block. Linux only; elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import sys

from torch import Tensor

MADV_WILLNEED = 3
MADV_DONTNEED = 4
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _LINUX else None


def advise(tensors: list[Tensor], advice: int) -> None:
    """madvise over the whole pages each CPU tensor spans (ctypes releases the GIL meanwhile)."""
    if _libc is None:
        return
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        span = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
        start = tensor.data_ptr()
        end = start + (span + 1) * tensor.element_size()
        low, high = start // PAGE * PAGE, -(-end // PAGE) * PAGE
        _libc.madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), advice)


def map_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """name -> tensor viewing a read-only shared mapping of a safetensors file; nothing is read.

    Read-only and shared, unlike a loader's private writable mapping: the kernel charges such a
    mapping to no process's commit, so a checkpoint larger than RAM plus swap (a 28.6 GB DiT on
    a 24 GB machine) can be mapped. Writing to these tensors would fault; nothing does.
    """
    import json
    import mmap
    import struct
    import warnings

    import torch

    from wanflow.memory.sizes import read_header

    infos = read_header(path)
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out = {}
    with warnings.catch_warnings():  # torch warns that the buffer is not writable: it is not meant to be
        warnings.simplefilter("ignore", UserWarning)
        for name, info in infos.items():
            dtype = _torch_dtypes()[info.dtype]
            begin, end = header[name]["data_offsets"]
            if end == begin:  # an empty tensor (a scaled-fp8 file's marker): nothing to map
                out[name] = torch.empty(info.shape, dtype=dtype)
                continue
            flat = torch.frombuffer(mapping, dtype=torch.uint8, count=end - begin, offset=8 + length + begin)
            out[name] = flat.view(dtype).reshape(info.shape) if (8 + length + begin) % dtype.itemsize == 0 \
                else flat.clone().view(dtype).reshape(info.shape)
    return out


def _torch_dtypes() -> dict:
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
