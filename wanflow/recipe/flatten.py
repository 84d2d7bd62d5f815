"""Plain-data views of a recipe: nested tables (for TOML) and flat dotted keys (for the engine)."""

from __future__ import annotations

from typing import Any

import attrs

from wanflow.recipe.schema import Recipe

#: Keys that shape the recipe file rather than the work; they never reach the engine.
STRUCTURAL_KEYS = ("include", "sweep")


def to_data(obj: Any, *, keep_defaults: bool = True) -> Any:
    """Nested plain data in schema order: tables as dicts, tuples as lists, ``None`` left out."""
    if attrs.has(type(obj)):
        out = {}
        for field in attrs.fields(type(obj)):
            if isinstance(obj, Recipe) and field.name in STRUCTURAL_KEYS:
                continue
            value = getattr(obj, field.name)
            if value is None or (not keep_defaults and _is_default(field, value)):
                continue
            out[field.name] = to_data(value, keep_defaults=keep_defaults)
        return out
    if isinstance(obj, dict):
        return {k: to_data(v, keep_defaults=keep_defaults) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_data(v, keep_defaults=keep_defaults) for v in obj]
    return obj


def _is_default(field: attrs.Attribute, value: Any) -> bool:
    if field.default is attrs.NOTHING:
        return False
    default = field.default.factory() if isinstance(field.default, attrs.Factory) else field.default
    return value == default


def flatten(recipe: Recipe) -> dict[str, Any]:
    """Every setting as ``{"sampler.cfg": 5.0, ...}``; unset optional tables appear as ``None``."""
    out: dict[str, Any] = {}
    for field in attrs.fields(Recipe):
        if field.name not in STRUCTURAL_KEYS:
            _flatten_into(out, field.name, getattr(recipe, field.name))
    return out


def _flatten_into(out: dict[str, Any], prefix: str, value: Any) -> None:
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            _flatten_into(out, f"{prefix}.{field.name}", getattr(value, field.name))
    elif isinstance(value, dict) and prefix == "models":
        for name, model in value.items():
            _flatten_into(out, f"models.{name}", model)
        if not value:
            out["models"] = {}
    else:
        out[prefix] = to_data(value)
