"""`wanflow fmt`: canonical order and numbers, comments kept, idempotent, meaning preserved."""

from __future__ import annotations

import sys
import typing

import attrs
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from wanflow.recipe.canonical import format_recipe
from wanflow.recipe.schema import Memory, Output, Prompt, Runtime, Sampler, Vae, Video
from wanflow.recipe.structure import hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TABLES = {"prompt": Prompt, "video": Video, "sampler": Sampler, "vae": Vae, "memory": Memory,
          "runtime": Runtime, "output": Output}

MESSY = """\
# Cats, in canonical form.

name = "n"
model = "wan2.1-t2v-1.3b"
# the format version
schema = 1

[sampler]  # how we sample
cfg = 5 # guidance, an integer on purpose
# steps come first in canonical form
steps = 1_000

[prompt]
text = 'a cat'

[[lora]]
scale = 1
path = "x.safetensors"

[models.vae]
source = "a"

[models.dit]
source = "b"
"""


def test_messy_recipe_gets_canonical_order_numbers_and_keeps_comments():
    out = format_recipe(MESSY)
    assert out.index("# the format version\nschema = 1") < out.index('name = "n"') < out.index("model =")
    assert out.index("[prompt]") < out.index("[sampler]") < out.index("[models.dit]") < out.index(
        "[models.vae]") < out.index("[[lora]]")
    assert "steps = 1000" in out and "cfg = 5.0 # guidance, an integer on purpose" in out
    assert out.index("# steps come first in canonical form") == out.index("steps = 1000") - len(
        "# steps come first in canonical form\n")
    assert out.startswith("# Cats, in canonical form.\n\n")
    assert 'path = "x.safetensors"\nscale = 1.0' in out
    assert format_recipe(out) == out


COMMENTED_TABLES = """\
model = "wan2.1-t2v-1.3b"

[sampler]
steps = 3

# the prompt, first in canonical form
[prompt]
text = "a cat"

# the VAE override
[models.vae]
source = "a"
# the DiT override
[models.dit]
source = "b"

# memory last in the file, before [sampler] once formatted
[memory]
fp8 = false
# a closing note
"""


def test_a_comment_above_a_table_stays_above_that_table():
    out = format_recipe(COMMENTED_TABLES)
    for comment, header in (("# the prompt, first in canonical form", "[prompt]"),
                            ("# the VAE override", "[models.vae]"), ("# the DiT override", "[models.dit]"),
                            ("# memory last in the file, before [sampler] once formatted", "[memory]")):
        assert f"{comment}\n{header}\n" in out, (comment, out)
    assert out.index("[prompt]") < out.index("[sampler]") < out.index("[memory]") < out.index("[models.dit]")
    assert "[models]" not in out  # a comment must not give the super table a header of its own
    assert out.endswith("# a closing note\n")
    assert format_recipe(out) == out


def _value(tp: typing.Any) -> st.SearchStrategy:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is not None and args and origin is not tuple:  # Optional[X]
        return _value(args[0])
    if origin is tuple:
        return st.lists(st.integers(1, 99), min_size=2, max_size=2)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(0, 10**6)
    if tp is float:
        return st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False).map(lambda f: round(f, 4)))
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)


@st.composite
def recipes(draw) -> str:
    lines = ['model = "wan2.1-t2v-1.3b"'] if draw(st.booleans()) else []
    for table in draw(st.permutations(list(TABLES)))[: draw(st.integers(0, len(TABLES)))]:
        cls = TABLES[table]
        names = draw(st.permutations([f.name for f in attrs.fields(cls)]))[: draw(st.integers(1, 4))]
        if draw(st.booleans()):
            lines.append(f"# about {table}")
        lines.append(f"[{table}]")
        for name in names:
            comment = "  # note" if draw(st.booleans()) else ""
            lines.append(f"{name} = {tomlkit.item(draw(_value(hints(cls)[name]))).as_string()}{comment}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _normalised(data: dict) -> dict:
    """What fmt is allowed to change: integers written where the schema wants floats."""
    out = {}
    for key, value in data.items():
        if key in TABLES and isinstance(value, dict):
            types_ = hints(TABLES[key])
            value = {k: float(v) if types_.get(k) in (float, float | None) and isinstance(v, int) else v
                     for k, v in value.items()}
        out[key] = value
    return out


@settings(max_examples=60, deadline=None)
@given(recipes())
def test_fmt_is_idempotent_and_preserves_meaning(text):
    once = format_recipe(text)
    assert format_recipe(once) == once
    assert tomllib.loads(once) == _normalised(tomllib.loads(text))
    for table in TABLES:  # a comment written above a table is still right above it
        if f"# about {table}\n[{table}]" in text:
            assert f"# about {table}\n[{table}]\n" in once
