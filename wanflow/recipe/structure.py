"""Turn parsed TOML data into the typed schema, checking types, ranges and unknown keys.

Problems are collected, never raised one by one: a bad field takes its default so that the
rest of the recipe is still checked, and its path is remembered so later checks skip it.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from wanflow.recipe.aliases import unknown_key_hint
from wanflow.recipe.problems import KeyPath, Problems, did_you_mean, format_value

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Resolved type annotations of a schema class (cached: the schema is immutable)."""
    return typing.get_type_hints(cls)


def table_fields(cls: type) -> dict[str, attrs.Attribute]:
    return {f.name: f for f in attrs.fields(cls)}


def structure(cls: type, data: Any, path: KeyPath, problems: Problems) -> Any:
    """Build ``cls`` from a TOML table, recording every problem found under ``path``."""
    if not isinstance(data, dict):
        problems.add(path, data, f"must be a table ([{'.'.join(map(str, path))}])")
        return cls() if _all_defaulted(cls) else None
    fields = table_fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            problems.add(path + (key,), value, "unknown key" + unknown_key_hint(path + (key,), fields),
                         show_value=False)
            continue
        converted = convert(hints(cls)[key], value, path + (key,), problems, fields[key])
        if converted is not _BAD:
            kwargs[key] = converted
    for name, field in fields.items():
        if name not in kwargs and field.default is attrs.NOTHING and name not in data:
            problems.add(path + (name,), None, f"is required: {field.metadata['why']}", show_value=False)
    try:
        return cls(**kwargs)
    except TypeError:  # a required field is missing: the problem is already recorded
        return None


def _all_defaulted(cls: type) -> bool:
    return all(f.default is not attrs.NOTHING for f in attrs.fields(cls))


class _Bad:
    """Marker for a value that failed conversion (its problem is recorded)."""


_BAD = _Bad()


def convert(tp: Any, value: Any, path: KeyPath, problems: Problems, field: attrs.Attribute | None = None) -> Any:
    """Convert one value to the annotated type, or record a problem and return ``_BAD``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _union([a for a in args if a is not type(None)], value, path, problems, field)
    if origin is typing.Literal:
        return _literal(args, value, path, problems)
    if attrs.has(tp):
        return structure(tp, value, path, problems) if isinstance(value, dict) else _wrong(
            path, value, "a table", problems)
    if origin is tuple:
        return _tuple(args, value, path, problems, field)
    if origin in (Mapping, dict, typing.Mapping):
        return _mapping(args[1], value, path, problems)
    if tp is Any:
        return value
    return _scalar(tp, value, path, problems, field)


def _union(members: list, value: Any, path: KeyPath, problems: Problems, field: attrs.Attribute | None) -> Any:
    """The first member the value converts to without a problem (``str | tuple[str, ...]`` takes a
    path or an array of paths); when none does, the problems of the member of the value's own
    shape (an array's wrong item), else one naming every member."""
    if len(members) == 1:
        return convert(members[0], value, path, problems, field)
    for member in members:
        trial = Problems(problems.default_file, problems.origins)
        converted = convert(member, value, path, trial, field)
        if not trial.items:
            return converted
    shaped = next((m for m in members if _same_shape(m, value)), None)
    if shaped is not None:
        return convert(shaped, value, path, problems, field)
    why = f"; {field.metadata['why']}" if field is not None and "why" in field.metadata else ""
    problems.add(path, value, f"must be {' or '.join(_expected(m) for m in members)}, not {_kind(value)}{why}")
    return _BAD


def _same_shape(tp: Any, value: Any) -> bool:
    """Whether ``value`` is the kind of TOML value ``tp`` is read from (an array for a tuple...)."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        return isinstance(value, list)
    if attrs.has(tp) or origin in (Mapping, dict, typing.Mapping):
        return isinstance(value, dict)
    return origin is None and isinstance(tp, type) and isinstance(value, tp)


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "an array"
    if attrs.has(tp) or origin in (Mapping, dict, typing.Mapping):
        return "a table"
    if origin is typing.Literal:
        return "one of " + ", ".join(format_value(c) for c in typing.get_args(tp))
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _scalar(tp: type, value: Any, path: KeyPath, problems: Problems, field: attrs.Attribute | None) -> Any:
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        return _wrong(path, value, _TYPE_NAMES.get(tp, tp.__name__), problems)
    return value if field is None or _in_range(value, path, problems, field) else _BAD


def _in_range(value: Any, path: KeyPath, problems: Problems, field: attrs.Attribute) -> bool:
    meta = field.metadata
    for bound, test, words in (("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"),
                               ("le", lambda v, b: v <= b, "≤")):
        b = meta.get(bound)
        if b is not None and isinstance(value, (int, float)) and not test(value, b):
            problems.add(path, value, f"must be {words} {b:g}; {field.metadata['why']}")
            return False
    return True


def _wrong(path: KeyPath, value: Any, expected: str, problems: Problems) -> _Bad:
    problems.add(path, value, f"must be {expected}, not {_kind(value)}")
    return _BAD


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _literal(choices: tuple, value: Any, path: KeyPath, problems: Problems) -> Any:
    if value in choices and type(value) is type(choices[0]):
        return value
    listed = ", ".join(format_value(c) for c in choices)
    problems.add(path, value, f"must be one of {listed}" + did_you_mean(str(value), map(str, choices)))
    return _BAD


def _tuple(args: tuple, value: Any, path: KeyPath, problems: Problems, field: attrs.Attribute | None) -> Any:
    if isinstance(value, str) and args[-1] is Ellipsis and args[0] is str:
        value = [value]  # `include = "base.toml"` reads as a list of one
    if not isinstance(value, list):
        return _wrong(path, value, "an array", problems)
    if args[-1] is not Ellipsis and len(value) != len(args):
        problems.add(path, value, f"must be an array of {len(args)} values")
        return _BAD
    types_ = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
    items = [convert(t, v, path + (i,), problems, None if attrs.has(t) else field)
             for i, (t, v) in enumerate(zip(types_, value))]
    return _BAD if any(i is _BAD or i is None for i in items) else tuple(items)


def _mapping(value_type: Any, value: Any, path: KeyPath, problems: Problems) -> Any:
    if not isinstance(value, dict):
        return _wrong(path, value, "a table", problems)
    out = {k: convert(value_type, v, path + (k,), problems) for k, v in value.items()}
    return {k: v for k, v in out.items() if v is not _BAD and v is not None}
