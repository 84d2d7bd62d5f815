"""Collecting recipe problems so that a recipe's errors are all reported at once.

Every problem names the file the value came from, the key as the user wrote it
(``[sampler].cfg``), the bad value, what is wrong and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

KeyPath = tuple  # ("sampler", "cfg") or ("lora", 0, "path")


def format_key(path: KeyPath) -> str:
    """Render a key path the way it appears in a TOML file: ``[sampler].cfg``, ``[[lora]] #1 path``,
    ``[inputs.vace].reference[1]`` (an array's item, counted from 0 as in the array)."""
    if not path:
        return "(top level)"
    if len(path) > 2 and isinstance(path[-1], int) and not isinstance(path[1], int):
        return f"{format_key(path[:-1])}[{path[-1]}]"  # one item of an array: [inputs.vace].reference[1]
    if len(path) == 1:
        return str(path[0])
    if isinstance(path[1], int):
        rest = ".".join(str(p) for p in path[2:])
        return f"[[{path[0]}]] #{path[1] + 1}" + (f" {rest}" if rest else "")
    table = ".".join(str(p) for p in path[:-1])
    last = f'"{path[-1]}"' if "." in str(path[-1]) else path[-1]
    return f"[{table}].{last}"


def format_value(value: object) -> str:
    """A short TOML-like rendering of a value for messages."""
    if isinstance(value, str):
        short = value if len(value) <= 60 else value[:57] + "..."
        return '"' + short.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {format_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`did you mean "steps"?` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


@attrs.define
class Problems:
    """Accumulates problems; ``origin_of`` maps a key path to the file (or ``--set``) it came from."""

    default_file: str
    origins: Mapping[KeyPath, str] = attrs.field(factory=dict)
    items: list[str] = attrs.field(factory=list)
    bad_paths: set[KeyPath] = attrs.field(factory=set)

    def file_of(self, path: KeyPath) -> str:
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        return self.default_file

    def add(self, path: KeyPath, value: object, message: str, *, show_value: bool = True) -> None:
        where = f"{self.file_of(path)}: {format_key(path)}"
        shown = f" = {format_value(value)}" if show_value else ""
        self.items.append(f"{where}{shown}: {message}")
        self.bad_paths.add(tuple(path))

    def add_plain(self, message: str) -> None:
        self.items.append(message)

    def is_bad(self, path: KeyPath) -> bool:
        return any(path[: len(bad)] == bad for bad in self.bad_paths)


def refuse_changed(problems: Problems, table: KeyPath, current: object, defaults: object,
                   unread: Mapping[str, str]) -> None:
    """Each setting of ``unread`` that ``current`` (the table at ``table``) sets away from its
    default, refused with its fix: a step that would not read it must not take it silently."""
    for key, fix in unread.items():
        value = getattr(current, key)
        if value != getattr(defaults, key) and not problems.is_bad((*table, key)):
            problems.add((*table, key), list(value) if isinstance(value, tuple) else value, fix)


def refuse_whole_dit_settings(problems: Problems, recipe: Any, dit: str, *, compile_too: bool = True) -> None:
    """The settings a DiT loaded whole by its own loader would not read, refused naming ``dit``
    ("Video-As-Prompt's DiT"): ``[memory].fp8`` and ``[runtime].fp8_matmul`` (fp8 storage of its
    blocks is not built) and, with ``compile_too``, ``[runtime].compile`` (its blocks are not
    compiled)."""
    if recipe.memory.fp8:
        problems.add(("memory", "fp8"), True, f"fp8 storage of {dit}'s blocks is not built yet (it loads whole in "
                     "the compute dtype): use false")
    if recipe.runtime.fp8_matmul:
        problems.add(("runtime", "fp8_matmul"), True, f"fp8 matmuls of {dit}'s blocks are not built yet: "
                     "use false")
    if compile_too and recipe.runtime.compile != "none":
        problems.add(("runtime", "compile"), recipe.runtime.compile, f"compiling {dit}'s blocks is not built yet: "
                     'use "none"')
