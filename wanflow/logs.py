"""Logging setup: human-readable lines on a terminal, JSON lines with ``--log-json``."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(*, json: bool = False, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route structlog to ``stream`` (default: whatever ``sys.stderr`` is when an event is logged):
    colour on a TTY, JSON lines when asked."""
    colors = (stream or sys.stderr).isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: structlog.PrintLogger(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
