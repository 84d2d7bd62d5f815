"""`wanflow fmt`: the canonical text of a recipe, so that recipe diffs in review are minimal.

Canonical means: identity keys first (schema, name, model, include), then tables in schema order,
keys inside a table in schema order (unknown keys last, as written), numbers normalised to the
schema's type (``cfg = 5`` -> ``5.0``, ``1_000`` -> ``1000``), one blank line before each table.
Comments stay attached to the key or table they precede, and trailing comments stay on their line.
Sweep keys keep their order: it is the order of the jobs.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import attrs
import tomlkit
from tomlkit.items import (
    AoT,
    Comment,
    Float,
    InlineTable,
    Integer,
    Item,
    Table,
    Whitespace,
)

from wanflow.errors import display_path
from wanflow.recipe.schema import Recipe
from wanflow.recipe.source import parse_toml
from wanflow.recipe.structure import hints

ORDER_FIRST = ("schema", "name", "model", "include")


def format_recipe(text: str, file: str = "<recipe>") -> str:
    """The canonical form of a recipe's text (raises RecipeError on a TOML syntax error)."""
    parse_toml(text, file)  # precise syntax errors with line and column
    doc = tomlkit.parse(text)
    out = tomlkit.document()
    header, body = _header(doc.body)
    for comment in header:
        out.add(tomlkit.comment(_comment_text(comment)))
    if header:
        out.add(tomlkit.nl())
    _fill(out, body, Recipe, top=True)
    return tomlkit.dumps(out).strip("\n") + "\n"


def format_file(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return format_recipe(handle.read(), display_path(path))


def _header(body: list) -> tuple[list[Item], list]:
    """Comments at the top of the file, separated from the first key by a blank line, stay on top."""
    count = 0
    while count < len(body) and body[count][0] is None and isinstance(body[count][1], Comment):
        count += 1
    if count and count < len(body) and isinstance(body[count][1], Whitespace):
        return [item for _, item in body[:count]], body[count:]
    return [], body


def _comment_text(comment: Item) -> str:
    """The comment after its ``# `` (inner indentation kept: comments often hold aligned text)."""
    text = comment.as_string().strip()[1:]
    return (text[1:] if text.startswith(" ") else text).rstrip()


def _groups(body: list, lead: list[Item] = ()) -> tuple[list[tuple[Any, Item, list[Item]]], list[Item]]:
    """Pair every key with the comments just above it; return the groups and trailing comments.

    TOML parsers file a comment written above a table header under the table before it (it comes
    after that table's last key); it is taken back from there and given to the table it precedes.
    """
    groups, pending = [], list(lead)  # ``lead``: comments above this (super) table, for its first key
    for key, item in body:
        if key is None:
            if isinstance(item, Comment):
                pending.append(item)
            continue
        groups.append((key, item, pending))
        pending = _take_trailing(item) if _is_table(item) else []
    return groups, pending


def _take_trailing(item: Item) -> list[Item]:
    """Remove and return the comments after a table's last key (in its last sub-table, if nested)."""
    if isinstance(item, AoT):
        return _take_trailing(item.body[-1]) if item.body else []
    body = item.value.body
    end = len(body)
    while end and body[end - 1][0] is None:
        end -= 1
    tail = [entry for _, entry in body[end:] if isinstance(entry, Comment)]
    if not tail and end and _is_table(body[end - 1][1]):
        return _take_trailing(body[end - 1][1])
    del body[end:]  # comments and blank lines only: no key's index moves
    return tail


def _rank(schema: type | None, names: list[str], top: bool) -> dict[str, int]:
    order = list(ORDER_FIRST) if top else []
    if schema is not None and attrs.has(schema):
        order += [f.name for f in attrs.fields(schema) if f.name not in order]
    return {name: i for i, name in enumerate(order)} | {
        n: len(order) + i for i, n in enumerate(n for n in names if n not in order)}


def _fill(container: Any, body: list, schema: type | None, top: bool = False, lead: list[Item] = ()) -> None:
    groups, trailing = _groups(body, lead)
    rank = _rank(schema, [k.key for k, _, _ in groups], top)
    if schema is not None and typing.get_origin(schema) is None and not attrs.has(schema):
        schema = None
    groups.sort(key=lambda g: (_is_table(g[1]), rank[g[0].key] if schema is not dict else 0))
    for key, item, comments in groups:
        if isinstance(item, Table) and item.is_super_table():  # no header: its first sub-table takes them
            item, comments = _normalise(item, _field_type(schema, key.key), comments), []
        else:
            item = _normalise(item, _field_type(schema, key.key))
        _add(container, key.key, item, comments)
    for comment in trailing:
        container.add(tomlkit.comment(_comment_text(comment)))


def _add(container: Any, key: str, item: Item, comments: list[Item]) -> None:
    """Add a key with the comments written above it.

    Above a table they go into its header's indentation: written into the enclosing table they
    would end up under the wrong header (and a ``[models]`` of only sub-tables would grow one).
    """
    if comments and _is_table(item):
        head = item.body[0] if isinstance(item, AoT) else item
        body = container.body if isinstance(container, tomlkit.TOMLDocument) else container.value.body
        blank = "\n" if body and not isinstance(body[-1][1], Whitespace) else ""
        head.trivia.indent = blank + "".join(f"# {_comment_text(c)}\n" for c in comments)
    else:
        for comment in comments:
            container.add(tomlkit.comment(_comment_text(comment)))
    container.add(key, item)


def _is_table(item: Item) -> bool:
    return isinstance(item, (Table, AoT))


def _field_type(schema: Any, name: str) -> Any:
    if schema is None or schema is dict:
        return None
    if attrs.has(schema):
        return hints(schema).get(name)
    return None


def _unwrap(tp: Any) -> Any:
    """Optional[X] -> X; Mapping[str, X] -> ("map", X); tuple[X, ...] of tables -> ("array", X)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _unwrap(args[0])
    if origin is not None and origin.__name__ == "Mapping":
        return ("map", args[1])
    if origin is tuple and args and attrs.has(args[0]):
        return ("array", args[0])
    return tp


def _normalise(item: Item, tp: Any, lead: list[Item] = ()) -> Item:
    tp = _unwrap(tp)
    if isinstance(item, Table):
        return _table(item, tp, lead)
    if isinstance(item, AoT):
        inner = tp[1] if isinstance(tp, tuple) and tp[0] == "array" else None
        out = tomlkit.aot()
        for table in item.body:
            out.append(_table(table, inner))
        return out
    if isinstance(item, InlineTable):
        return item
    return _scalar(item, tp)


def _table(item: Table, tp: Any, lead: list[Item] = ()) -> Table:
    if isinstance(tp, tuple) and tp[0] == "map":
        sub_schema: Any = ("map-of", tp[1])
    else:
        sub_schema = tp if isinstance(tp, type) and attrs.has(tp) else None
    table = tomlkit.table(is_super_table=item.is_super_table())
    if isinstance(sub_schema, tuple):
        _fill_map(table, item.value.body, sub_schema[1], lead)
    else:
        _fill(table, item.value.body, sub_schema, lead=lead)
    _copy_comment(item, table)
    return table


def _fill_map(container: Any, body: list, value_schema: Any, lead: list[Item] = ()) -> None:
    """A table of named sub-tables ([models.dit], [models.vae]): sub-tables sorted by name."""
    groups, trailing = _groups(body, lead)
    groups.sort(key=lambda g: g[0].key)
    for key, item, comments in groups:
        _add(container, key.key, _table(item, value_schema) if isinstance(item, Table) else item, comments)
    for comment in trailing:
        container.add(tomlkit.comment(_comment_text(comment)))


def _scalar(item: Item, tp: Any) -> Item:
    value = item.unwrap()
    if tp is float and isinstance(item, Integer) and not isinstance(value, bool):
        new = tomlkit.item(float(value))
    elif isinstance(item, Float):
        new = tomlkit.item(float(value))
    elif isinstance(item, Integer) and not isinstance(value, bool):
        new = tomlkit.item(int(value))
    else:
        return item
    _copy_comment(item, new)
    return new


def _copy_comment(old: Item, new: Item) -> None:
    if old.trivia.comment:
        new.comment(old.trivia.comment.lstrip("#").strip())

