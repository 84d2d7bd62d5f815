"""Logging setup and the run's terminal lines, for the command line.

Two audiences: a person at a terminal (readable lines that never tear the progress bar, one line
per step) and a machine (``--log-json``: JSON lines). Library use is ``wanflow.api``'s: nothing
is printed until the caller configures Python's ``logging``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from wanflow.columns import NODE_WIDTH


def write_line(text: str, stream: TextIO | None = None) -> None:
    """Write one line to ``stream`` (default: the current ``sys.stderr``) without tearing a bar.

    While a tqdm bar is drawn on the terminal, a plain write would land after the bar's text on
    the same line; ``tqdm.write`` clears the bar, writes the line and redraws the bar below it.
    tqdm is only consulted when something already imported it: no bar exists otherwise.
    """
    out = stream or sys.stderr
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None:
        tqdm_module.tqdm.write(text, file=out)
    else:
        out.write(text + "\n")
    out.flush()


class _ConsoleLogger:
    """A structlog logger whose every method writes the rendered line through :func:`write_line`."""

    def __init__(self, stream: TextIO | None):
        self._stream = stream

    def msg(self, message: str) -> None:
        write_line(message, self._stream)

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


def configure(*, json: bool = False, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route structlog to ``stream`` (default: whatever ``sys.stderr`` is when an event is logged):
    colour on a TTY, JSON lines when asked, always around any progress bar."""
    colors = (stream or sys.stderr).isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _ConsoleLogger(stream),
        cache_logger_on_first_use=False,
    )


def level_for(*, verbose: bool, quiet: bool, json: bool) -> int:
    """The console level: errors only when quiet; everything with ``-v`` or as JSON (a machine
    reads every engine event); else notices (downloads, resized inputs, waits), not engine events."""
    if quiet:
        return logging.ERROR
    return logging.DEBUG if verbose or json else logging.INFO


class StepLines:
    """An event callback that prints one line per step: hit, or computed with its duration.

    A sweep's jobs get a header line each, so the steps of each job read as a block.
    """

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream

    def __call__(self, event: Mapping[str, Any]) -> None:
        name = event.get("event")
        if name == "run.start" and event.get("job"):
            write_line(f"{event['recipe']} [{event['job']}]", self._stream)
        elif name == "step.hit":
            write_line(f"  hit       {event['node']}", self._stream)
        elif name == "step.done":
            write_line(f"  computed  {event['node']:<{NODE_WIDTH}} {_seconds(float(event['duration_s']))}",
                       self._stream)
        elif name == "step.resume":
            write_line(f"  resuming  {event['node']} after {event['done']} saved steps", self._stream)


def _seconds(duration: float) -> str:
    """``0.12 s``, ``12.3 s``, ``4 min 05 s``: short, and exact enough to compare steps."""
    if duration < 10:
        return f"{duration:.2f} s"
    if duration < 60:
        return f"{duration:.1f} s"
    minutes, seconds = divmod(round(duration), 60)
    return f"{minutes} min {seconds:02d} s"
