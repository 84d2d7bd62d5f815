from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._fakes import FakePipeline, FakeResolved, make_world
from wanflow.engine import Cache, RunOptions


@pytest.fixture
def world(tmp_path: Path) -> tuple[FakeResolved, FakePipeline]:
    return make_world(tmp_path / "world")


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    with Cache(tmp_path / "cache") as c:
        yield c


@pytest.fixture
def opts(tmp_path: Path) -> RunOptions:
    return RunOptions(runs_dir=tmp_path / "runs", quiet=True, plugins=(("wanflow", "0.1.0"),))


@pytest.fixture
def counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "counts"
    d.mkdir()
    monkeypatch.setenv("FAKE_COUNT_DIR", str(d))
    return d


def count(d: Path, kind: str) -> int:
    f = d / f"{kind}.count"
    return len(f.read_text().splitlines()) if f.exists() else 0
