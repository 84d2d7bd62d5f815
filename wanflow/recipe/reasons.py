"""The schema by dotted key: every settable key, and the documented reason of its default.

``wanflow show`` prints each default with its ``why``; "did you mean" looks keys up across tables.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Iterator
from typing import Any

import attrs

from wanflow.recipe.schema import ModelSource, Recipe

#: Top-level fields that are not tables of settings (files, lists of tables, the sweep itself).
_NOT_SETTINGS = ("models", "lora", "sweep", "include")


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _fields(cls: type, prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], attrs.Attribute]]:
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        if not prefix and field.name in _NOT_SETTINGS:
            continue
        tp = _unwrap(hints[field.name])
        if attrs.has(tp):
            yield from _fields(tp, prefix + (field.name,))
        else:
            yield prefix + (field.name,), field


@functools.cache
def settings() -> dict[str, attrs.Attribute]:
    """Dotted key -> schema field, for every key a table or the top level can set."""
    return {".".join(path): field for path, field in _fields(Recipe, ())}


def schema_keys() -> tuple[str, ...]:
    """Every dotted key a recipe can set in a table or at the top (``inputs.camera.direction``…)."""
    return tuple(settings())


def why(dotted: str) -> str | None:
    """The documented reason of a setting's default (``[models.X]`` keys included), or None."""
    field = settings().get(dotted)
    parts = dotted.split(".")
    if field is None and len(parts) == 3 and parts[0] == "models":
        field = next((f for f in attrs.fields(ModelSource) if f.name == parts[2]), None)
    return None if field is None else str(field.metadata.get("why") or "") or None
