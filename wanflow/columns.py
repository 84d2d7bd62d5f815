"""Widths of the columns wanflow prints, shared by the layers that print them (the engine's
``explain`` and the terminal's step lines), so their node names line up; imports nothing."""

from __future__ import annotations

#: The node-name column: wide enough for the longest built-in node names
#: (``prepare-conditioning:animate-background``), so the verdicts and durations line up.
NODE_WIDTH = 40
