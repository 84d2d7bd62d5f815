"""Structured run events: structlog, an ``events.jsonl`` stream, a callback, progress bars.

Engine events are logged at DEBUG: a terminal shows them with ``-v`` (and ``--log-json``); by
default the CLI renders them as one line per step instead (``wanflow.logs.StepLines``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from wanflow.engine.step import Progress

log = structlog.get_logger("wanflow.engine")

EventCallback = Callable[[dict[str, Any]], None]


class EventLog:
    """Every engine event goes to structlog (DEBUG), to the run's ``events.jsonl`` and to a callback."""

    def __init__(self, on_event: EventCallback | None = None):
        self.events: list[dict[str, Any]] = []
        self._sink: Any = None
        self._on_event = on_event

    def attach(self, path: Path) -> None:
        """Stream events (past and future) to a JSON-lines file, flushed per line."""
        self._sink = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        for ev in self.events:
            self._write(ev)

    def emit(self, event: str, **fields: Any) -> None:
        """Record one event."""
        ev = {"event": event, "ts": round(time.time(), 6), **fields}
        self.events.append(ev)
        log.debug(event, **fields)
        if self._sink is not None:
            self._write(ev)
        if self._on_event is not None:
            self._on_event(ev)

    def _write(self, ev: dict[str, Any]) -> None:
        self._sink.write(json.dumps(ev, sort_keys=True, default=str) + "\n")
        self._sink.flush()

    def close(self) -> None:
        """Close the JSON-lines file."""
        if self._sink is not None:
            self._sink.close()
            self._sink = None


class _NullBar:
    """A bar that shows nothing (``--quiet``)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class Bars:
    """Makes the progress bars that long steps drive; silent when quiet, and when stderr is not a
    terminal (a bar redrawn with carriage returns is noise in a CI log or a file)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet

    def __call__(self, total: int, desc: str = "", unit: str = "it") -> Progress:
        if self.quiet:
            return _NullBar()
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=None)
