"""wanflow: a declarative, content-addressed job runner for the Wan video-diffusion models.

The library API (``wanflow.load``, ``wanflow.validate``, ``wanflow.run``, ``wanflow.run_all`` and
their ``Recipe``, ``RunResult`` and ``StepRun``) lives in ``wanflow.api``; it is imported on first
use, so ``import wanflow`` stays instant and has no side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: The newest recipe schema this wanflow understands; a recipe asking for more is refused.
SCHEMA_VERSION = 1

if TYPE_CHECKING:
    from wanflow.api import Recipe, RunResult, StepRun, load, run, run_all, validate

__all__ = ["SCHEMA_VERSION", "Recipe", "RunResult", "StepRun", "__version__", "load", "run", "run_all",
           "validate"]

_API = frozenset({"Recipe", "RunResult", "StepRun", "load", "run", "run_all", "validate"})


def __getattr__(name: str) -> Any:
    """The library API, imported when first asked for."""
    if name in _API:
        from wanflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'wanflow' has no attribute {name!r}")
