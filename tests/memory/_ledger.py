"""Live tensor bytes of a CPU run, measured at every operation: the peak a planner predicts.

RSS is the wrong measure at tiny sizes (the interpreter and torch take hundreds of MB, and
glibc keeps freed memory), so the tests count tensors instead: a dispatch mode records each
storage an operation creates (freed when its storage is), and at every operation adds the
bytes of the model's parameters that hold memory at that moment (meta placeholders hold none;
a view of a mapped checkpoint counts its own bytes, which touching it makes resident). Storages
shared by several tensors, or by a view and its base, count once.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def growth(measure, small, large) -> tuple[int, int]:
    """(measured, predicted) growth of a step's bytes from case ``small`` to case ``large``;
    ``measure(case)`` gives the case's (measured, predicted) bytes."""
    (m1, p1), (m2, p2) = measure(small), measure(large)
    return m2 - m1, p2 - p1


def seeded(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """``model`` with every parameter drawn from N(0, std²), seed 0 (a tiny model that moves its
    tokens, so each operation's tensors are what a trained one's are)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers that hold memory now (each data pointer once)."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        if not t.is_meta and t.numel():
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


class LiveBytes(TorchDispatchMode):
    """Peak of (tensors created inside the mode and still alive) + the model's weights.

    ``elsewhere``: storage -> bytes of tensors made outside the mode (a dispatch mode sees its own
    thread only: a block read ahead on the placement's reader thread), counted while alive and
    not yet the model's weights; ``peak_elsewhere`` is their own peak."""

    def __init__(self, model: torch.nn.Module, elsewhere: dict[int, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.live: dict[int, int] = {}
        self.elsewhere = elsewhere if elsewhere is not None else {}
        self.peak = 0
        self.peak_weights = 0
        self.peak_elsewhere = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        owned = {p.untyped_storage()._cdata for p in self.model.parameters() if not p.is_meta}
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live or key in owned or key in inputs:
                    continue
                self.live[key] = storage.nbytes()
                weakref.finalize(storage, self.live.pop, key, None)
        weights = weight_bytes(self.model)
        elsewhere = dict(self.elsewhere)
        self.peak_elsewhere = max(self.peak_elsewhere, sum(elsewhere.values()))
        apart = sum(n for key, n in elsewhere.items() if key not in owned and key not in self.live)
        self.peak_weights = max(self.peak_weights, weights)
        self.peak = max(self.peak, sum(self.live.values()) + weights + apart)
        return out


def track_copies(monkeypatch, placement_module) -> dict[int, int]:
    """Storage -> bytes of every copy a CPU placement fetches (``_on_cpu(block, name, ...)``; a
    source used in place is no copy), on any thread, while it is alive: what a streamed run holds
    of its blocks at once."""
    alive: dict[int, int] = {}
    fetch = placement_module._on_cpu

    def counted(block, full, *args, **kwargs):
        out = fetch(block, full, *args, **kwargs)
        storage = out.untyped_storage()
        if storage._cdata != block.source[full].untyped_storage()._cdata and storage._cdata not in alive:
            alive[storage._cdata] = storage.nbytes()
            weakref.finalize(storage, alive.pop, storage._cdata, None)
        return out

    monkeypatch.setattr(placement_module, "_on_cpu", counted)
    return alive
