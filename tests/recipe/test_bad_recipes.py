"""Every recipe under bad/ has one defect; `wanflow validate` must name it exactly, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from wanflow.cli import main
from wanflow.errors import RecipeError
from wanflow.recipe import load_recipe

BAD = Path(__file__).parent / "bad"
CASES = sorted(BAD.glob("*.toml"))


def expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message fragment>'"
    return first.removeprefix("# expect: ")


def test_the_corpus_is_complete():
    assert len(CASES) == 72


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_one_defect_one_precise_message(path, monkeypatch):
    monkeypatch.chdir(BAD.parent.parent.parent)
    rel = path.relative_to(Path.cwd())
    with pytest.raises(RecipeError) as err:
        load_recipe(rel)
    assert len(err.value.problems) == 1, err.value.problems
    message = err.value.problems[0]
    assert expected(path) in message
    assert str(rel) in message  # the file is named (for a cycle: within the chain)


def test_cli_reports_all_bad_recipes_at_once_without_traceback(capsys, monkeypatch):
    monkeypatch.chdir(BAD.parent.parent.parent)
    code = main(["validate", str(BAD.relative_to(Path.cwd()).as_posix()).rstrip("/") + "/"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    for path in CASES:
        assert expected(path) in err, path.name
