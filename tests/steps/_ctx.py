"""A stand-in for the engine's step context: params, inputs, weights and partial checkpoints in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Stop(Exception):
    """Raised to simulate a run killed after a checkpoint."""


class Bar:
    def __init__(self) -> None:
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        pass


class Ctx:
    def __init__(self, params: dict, inputs: dict | None = None, weights: dict | None = None,
                 stop_after: int | None = None, partial: tuple[int, Any] | None = None):
        self.params, self._inputs, self._weights = params, inputs or {}, weights or {}
        self.stop_after, self.partial, self.bars = stop_after, partial, []

    def input(self, role: str) -> Any:
        return self._inputs[role]

    def weight(self, role: str) -> Path:
        return Path(self._weights[role])

    def file(self, role: str) -> Path:
        return Path(self._weights[role])

    def progress(self, total: int, desc: str = "", unit: str = "it") -> Bar:
        self.bars.append((total, Bar()))
        return self.bars[-1][1]

    def load_partial(self) -> tuple[int, Any] | None:
        return self.partial

    def save_partial(self, done: int, state: Any) -> None:
        self.partial = (done, {k: v.clone() for k, v in state.items()})
        if self.stop_after is not None and done >= self.stop_after:
            raise Stop
