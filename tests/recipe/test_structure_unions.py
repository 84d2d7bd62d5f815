"""Structuring a union field: the member the value fits is taken, not the first one, and a value
that fits none is refused naming what it may be; an array's bad item is named by its index."""

from __future__ import annotations

import attrs

from wanflow.recipe.problems import Problems, format_key
from wanflow.recipe.structure import structure


@attrs.frozen
class Table:
    paths: str | tuple[str, ...] | None = attrs.field(default=None, metadata={"why": "one path or several"})
    count: int | None = attrs.field(default=None, metadata={"why": "how many"})


def _read(data: dict) -> tuple[Table | None, list[str]]:
    problems = Problems("r.toml")
    return structure(Table, data, ("t",), problems), problems.items


def test_a_string_and_an_array_each_take_their_own_member():
    assert _read({"paths": "a.png"}) == (Table(paths="a.png"), [])
    assert _read({"paths": ["a.png", "b.png"]}) == (Table(paths=("a.png", "b.png")), [])
    assert _read({"paths": []}) == (Table(paths=()), [])


def test_a_value_of_no_member_names_every_member_and_why():
    _, items = _read({"paths": 7})
    assert items == ["r.toml: [t].paths = 7: must be a string or an array, not an integer; one path or several"]


def test_an_array_with_a_wrong_item_names_the_item():
    _, items = _read({"paths": ["a.png", 3]})
    assert items == ["r.toml: [t].paths[1] = 3: must be a string, not an integer"]


def test_an_optional_scalar_still_reads_as_before():
    assert _read({"count": 3}) == (Table(count=3), [])
    assert _read({"count": "3"})[1] == ["r.toml: [t].count = \"3\": must be an integer, not a string"]


def test_item_keys_render_with_their_index():
    assert format_key(("inputs", "vace", "reference", 1)) == "[inputs.vace].reference[1]"
    assert format_key(("lora", 0, "path")) == "[[lora]] #1 path"
    assert format_key(("sampler", "cfg")) == "[sampler].cfg"
