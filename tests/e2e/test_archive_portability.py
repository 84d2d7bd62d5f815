"""A run archive travels: tarred, imported on another path with the original input deleted, with
another cache and the weights in another folder, it reproduces bit for bit; an input that is not
the run's is named, and nothing is computed."""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e._layout import write_models_root
from tests.e2e.conftest import write_recipe
from wanflow.cli import main
from wanflow.engine import execute

FAMILY = "wan2.1-i2v-14b-480p"


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def imported(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Path:
    """An I2V run on "my" machine, tarred; imported on a colleague's; "my" files deleted."""
    mine = tmp_path / "mine"
    recipe = write_recipe(mine, FAMILY, {"image": _png(mine / "photo.png", 0)})
    assert main(["run", str(recipe), "--runs-dir", str(env), "--quiet"]) == 0
    (arc,) = (env / recipe.stem).iterdir()
    tar = tmp_path / "mail" / "run.tar.gz"
    tar.parent.mkdir()
    with tarfile.open(tar, "w:gz") as t:
        t.add(arc, arcname=arc.name)
    shutil.rmtree(mine)  # the recipe and its input image are gone
    shutil.rmtree(env)
    colleague = tmp_path / "colleague"
    monkeypatch.setenv("WANFLOW_CACHE", str(colleague / "cache"))
    monkeypatch.setenv("WANFLOW_MODELS", str(write_models_root(colleague / "models", (FAMILY,))))
    capsys.readouterr()
    assert main(["import", str(tar), "--runs-dir", str(colleague / "runs")]) == 0
    out = capsys.readouterr().out
    assert "weights: all 9 files present with the digests the run used" in out
    return Path(re.search(r"-> (\S+) \(its inputs are whole\)", out).group(1))


def test_an_imported_i2v_archive_reproduces_bit_identically(imported: Path, capsys) -> None:
    assert imported.parents[2].name == "colleague"
    assert re.search(r'(?m)^image = "inputs/[0-9a-f]{64}\.png"$', (imported / "resolved.toml").read_text())
    assert main(["reproduce", str(imported), "--runs-dir", str(imported.parents[1])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["video.json: bit-identical", "video.mp4: bit-identical"]
    assert out[2].startswith("8 of 8 steps recomputed; reproduction archived at ")


def _no_step_may_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(self):
        raise AssertionError("a step ran")

    monkeypatch.setattr(execute.Executor, "run", run)


def test_an_edited_archived_input_is_named_and_nothing_runs(imported: Path, monkeypatch, capsys) -> None:
    (stored,) = (imported / "inputs").iterdir()
    _png(stored, 1)  # a valid image, other pixels
    _no_step_may_run(monkeypatch)
    assert main(["reproduce", str(imported), "--runs-dir", str(imported.parents[1])]) == 2
    err = capsys.readouterr().err
    assert "nothing was computed" in err
    assert re.search(rf"input inputs.image: inputs/{stored.name} has sha256 \w+…, the run used \w+…: "
                     "the file was changed", err)
    assert [p.name for p in imported.parent.iterdir()] == [imported.name]


def test_resolved_toml_pointed_at_another_file_is_named_and_nothing_runs(imported: Path, tmp_path, monkeypatch,
                                                                         capsys) -> None:
    (stored,) = (imported / "inputs").iterdir()
    other = _png(tmp_path / "other.png", 2)
    text = (imported / "resolved.toml").read_text()
    (imported / "resolved.toml").write_text(text.replace(f"inputs/{stored.name}", str(other)))
    _no_step_may_run(monkeypatch)
    assert main(["reproduce", str(imported), "--runs-dir", str(imported.parents[1])]) == 2
    err = capsys.readouterr().err
    assert f"input inputs.image: resolved.toml names {other}, whose sha256" in err
    assert [p.name for p in imported.parent.iterdir()] == [imported.name]
