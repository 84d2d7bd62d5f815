"""The explicit causal frame cache: what each causal layer remembers from the previous chunk."""

from __future__ import annotations

from torch import Tensor, nn


class FrameCache:
    """One slot per cached causal layer, holding the last input frames it needs from earlier chunks.

    A slot is ``None`` until its layer has seen the first chunk. The cache belongs to one pass over
    one clip: make a new one per clip (or per spatial tile); modules keep no state of their own.
    """

    def __init__(self, slots: int):
        self._slots: list[Tensor | None] = [None] * slots

    def __len__(self) -> int:
        return len(self._slots)

    def read(self, slot: int) -> Tensor | None:
        """The frames stored by the previous chunk (None before the first chunk)."""
        return self._slots[slot]

    def write(self, slot: int, frames: Tensor) -> None:
        """Keep `frames` for the next chunk (the caller passes a copy, never a view of a big tensor)."""
        self._slots[slot] = frames

    @property
    def fresh(self) -> bool:
        """True before the first chunk: no layer has stored anything yet."""
        return all(s is None for s in self._slots)

    def nbytes(self) -> int:
        """Bytes held, to show that the cache does not grow with the clip's length."""
        return sum(s.numel() * s.element_size() for s in self._slots if s is not None)


def number_slots(module: nn.Module) -> int:
    """Give every cached layer under `module` its slot (in module order); returns the slot count."""
    count = 0
    for layer in module.modules():
        if getattr(layer, "cached", False):
            layer.slot = count
            count += 1
    return count
