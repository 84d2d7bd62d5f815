"""How much memory a load holds: on a device (without one), and in a checkpoint file's mapping.

The meta device stands in for the accelerator: a meta tensor made from real data (a copy from
the CPU, or an op on such a tensor) is what would occupy device memory. Meta tensors made from
nothing (the skeleton a model is built as before its weights arrive) cost nothing and are not
counted. Liveness follows storages, so views and parameters sharing a copy count once.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class DeviceLedger(TorchDispatchMode):
    """Live and peak bytes of data-bearing storages on the meta device, and the dtypes that arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # storage id -> bytes
        self.peak = 0
        self.arrived: dict[torch.dtype, int] = {}  # bytes copied onto the device, by dtype

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        from_data = any(not t.is_meta or self._counted(t) for t in inputs)
        if from_data:
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.is_meta:
                    self._track(t, copied=any(not i.is_meta for i in inputs))
        self.peak = max(self.peak, sum(self.live.values()))
        return out

    def _counted(self, t: torch.Tensor) -> bool:
        return t.untyped_storage()._cdata in self.live

    def _track(self, t: torch.Tensor, *, copied: bool) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        weakref.finalize(storage, self.live.pop, key, None)
        if copied:
            self.arrived[t.dtype] = self.arrived.get(t.dtype, 0) + storage.nbytes()


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (each storage once)."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes()
                for t in [*module.parameters(), *module.buffers()]}
    return sum(storages.values())


def mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total

