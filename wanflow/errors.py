"""The one small hierarchy of errors that wanflow raises on purpose.

The CLI prints a ``WanflowError`` as a message (exit 2, no traceback): it is the user's to fix.
Anything else is a bug in wanflow and is printed with its traceback (exit 1).
"""

from __future__ import annotations

from pathlib import Path


class WanflowError(Exception):
    """An error the user can fix; its message says what is wrong and how to fix it."""


class RecipeError(WanflowError):
    """A recipe (or a ``--set`` override) is invalid; carries every problem found at once."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ModelLoadError(WanflowError):
    """A checkpoint cannot be read or does not match the model asked for."""


class ModelInputError(WanflowError):
    """A tensor handed to a model has the wrong shape, size or values (raised before any work)."""


class EngineError(WanflowError):
    """The cache, a run archive or a plan cannot be used as asked."""


class ArchiveError(EngineError):
    """A run archive is missing, malformed, from a newer wanflow, or unsafe to import."""


class PluginError(WanflowError):
    """A plugin failed to register, or two plugins claim the same name."""


def display_path(path: Path | str) -> str:
    """A path as messages show it: relative to the working folder when inside it, else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
