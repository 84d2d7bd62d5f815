"""Canonical TOML text for plain recipe data (archives' resolved.toml, `wanflow show`)."""

from __future__ import annotations

from typing import Any

import tomlkit


def render_toml(data: dict[str, Any]) -> str:
    """Top-level scalars first, then one table per section, arrays of tables last, in data order."""
    doc = tomlkit.document()
    data = {k: v for k, v in data.items() if v not in ({}, [])}
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_array(v)}
    for key, value in scalars.items():
        doc.add(key, tomlkit.item(value))
    for key, value in data.items():
        if isinstance(value, dict):
            _add_table(doc, key, value)
        elif _is_table_array(value):
            array = tomlkit.aot()
            for entry in value:
                array.append(tomlkit.item(entry))
            doc.add(key, array)
    return tomlkit.dumps(doc)


def _add_table(parent: Any, key: str, value: dict[str, Any]) -> None:
    table = tomlkit.table(is_super_table=bool(value) and all(isinstance(v, dict) for v in value.values()))
    for k, v in value.items():
        if not isinstance(v, dict):
            table.add(k, tomlkit.item(v))
    for k, v in value.items():
        if isinstance(v, dict):
            _add_table(table, k, v)
    parent.add(key, table)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
