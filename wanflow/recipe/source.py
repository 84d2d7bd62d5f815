"""Reading recipe files: TOML parsing with precise syntax errors, includes, and `--set` overrides.

The result is one merged table plus, for every key path, where its value came from (the recipe,
an included base recipe, or ``--set``), so that errors name the right file and `wanflow show`
can say where each value came from.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import attrs

from wanflow.errors import RecipeError, display_path
from wanflow.recipe.problems import KeyPath

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@attrs.frozen
class Origin:
    """Where a value was written: ``label`` is "recipe", "include:<file>" or "--set"."""

    label: str
    file: str  # as shown in messages
    base_dir: Path  # relative paths in the value resolve against this folder


def parse_toml(text: str, file: str) -> dict[str, Any]:
    """Parse TOML, turning a syntax error into a RecipeError with the file, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        where = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if where:
            detail = msg[: where.start()].strip()
            raise RecipeError(f"{file}:{where[1]}:{where[2]}: TOML syntax error: {detail}; "
                              "fix the line (strings need quotes, tables [name], arrays [a, b])") from None
        raise RecipeError(f"{file}: TOML syntax error: {msg}") from None


def read_text(path: Path) -> str:
    """Read a recipe file, with clear errors for a missing, unreadable or binary file."""
    shown = display_path(path)
    if not path.exists():
        raise RecipeError(f"{shown}: no such recipe file; check the path")
    if path.is_dir():
        raise RecipeError(f"{shown}: is a folder, not a recipe file; name a .toml file inside it")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{shown}: is not UTF-8 text (a binary file?); a recipe is a TOML text file") from None
    except OSError as exc:
        raise RecipeError(f"{shown}: cannot be read ({exc.strerror}); check its permissions") from None


def load_layers(path: Path, text: str | None = None, _stack: tuple[Path, ...] = ()) -> tuple[dict, dict]:
    """Parse a recipe and its includes; return the merged table and the origin of every key path."""
    path = path.resolve() if text is None else path
    if path in _stack:
        chain = " -> ".join(display_path(p) for p in _stack + (path,))
        raise RecipeError(f"{display_path(_stack[-1])}: include cycle: {chain}; remove one of these includes")
    shown = display_path(path)
    data = parse_toml(read_text(path) if text is None else text, shown)
    label = "recipe" if not _stack else f"include:{shown}"
    origin = Origin(label, shown, path.parent)
    merged: dict = {}
    origins: dict[KeyPath, Origin] = {}
    for base in _include_list(data, shown):
        base_path = (path.parent / base).resolve()
        if not base_path.exists():
            raise RecipeError(f'{shown}: include = "{base}": no such file ({display_path(base_path)}); '
                              "fix the path (it is relative to this recipe)")
        base_data, base_origins = load_layers(base_path, None, _stack + (path,))
        merge(merged, base_data)
        origins.update(base_origins)
    merge(merged, data)
    origins.update({p: origin for p in key_paths(data)})
    return merged, origins


def _include_list(data: dict, shown: str) -> list[str]:
    inc = data.get("include", [])
    inc = [inc] if isinstance(inc, str) else inc
    if not isinstance(inc, list) or not all(isinstance(i, str) for i in inc):
        raise RecipeError(f"{shown}: include = {inc!r}: must be a file name or an array of file names")
    return inc


def merge(into: dict, layer: dict) -> None:
    """Deep-merge ``layer`` over ``into``: tables merge key by key, everything else replaces."""
    for key, value in layer.items():
        if key == "include":
            continue
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = deep_copy(value)


def deep_copy(value: Any) -> Any:
    """A copy of parsed TOML data (tables and arrays copied, scalars shared)."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def key_paths(data: dict, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every leaf key path in ``data``: values that are not tables (arrays are leaves; so is [sweep])."""
    out: list[KeyPath] = []
    for key, value in data.items():
        if isinstance(value, dict) and value and not (prefix == () and key == "sweep"):
            out.extend(key_paths(value, prefix + (key,)))
        else:
            out.append(prefix + (key,))
    return out


def parse_override(item: str) -> tuple[KeyPath, Any]:
    """``sampler.cfg=6`` -> (("sampler", "cfg"), 6.0-ish); the value is TOML, or a bare string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", key):
        raise RecipeError(f"--set {item}: must be KEY=VALUE with a dotted key, e.g. --set sampler.cfg=6.0")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # `--set prompt.text=a cat` needs no quotes
    return tuple(key.split(".")), value


def apply_override(data: dict, path: KeyPath, value: Any) -> None:
    """Set a dotted key in the merged table, creating tables on the way."""
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
