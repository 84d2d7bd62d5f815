"""`wanflow run recipes/quickstart.toml`: no download, an mp4, and a second run that is all hits."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import tomlkit
from PIL import Image

from tests.e2e._run import video_shape
from wanflow.cli import main
from wanflow.output import read_mp4_metadata

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"


def archives(runs: Path) -> list[Path]:
    return sorted(p for p in (runs / "quickstart").iterdir() if p.is_dir())


def test_quickstart_runs_then_hits(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    runs = tmp_path / "runs"
    assert main(["run", str(QUICKSTART), "--runs-dir", str(runs)]) == 0
    assert main(["run", str(QUICKSTART), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"\((\d+) hit, (\d+) computed\)", out) == [("0", "6"), ("6", "0")]
    first, second = archives(runs)
    video = first / "outputs" / "video.mp4"
    assert video_shape(video) == (9, 64, 64)  # the tiny family's 9 frames of 64×64
    assert video.read_bytes() == (second / "outputs" / "video.mp4").read_bytes()
    lock = tomlkit.parse((first / "lock.toml").read_text()).unwrap()
    assert lock["runtime"]["device"] == "cpu" and lock["runtime"]["dtype"] == "fp32"


def test_a_missing_seed_is_drawn_once_and_recorded_with_png_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "quickstart.toml"
    recipe.write_text(QUICKSTART.read_text().replace("seed = 0", "steps = 1"), encoding="utf-8")
    runs = tmp_path / "runs"
    small = ["--set", "video.frames=1", "--set", "video.width=16", "--set", "video.height=16",
             "--set", "output.png_frames=true"]
    assert main(["run", str(recipe), "--runs-dir", str(runs), "--quiet", *small]) == 0
    (archive,) = archives(runs)
    seed = tomlkit.parse((archive / "resolved.toml").read_text())["sampler"]["seed"]
    assert isinstance(seed, int) and seed >= 0
    assert read_mp4_metadata(archive / "outputs" / "video.mp4")["seed"] == seed
    assert "seed" not in tomlkit.parse((archive / "recipe.toml").read_text()).get("sampler", {})
    with zipfile.ZipFile(archive / "outputs" / "frames.zip") as zf:
        assert zf.namelist() == ["frame_00000.png"]
        assert Image.open(io.BytesIO(zf.read("frame_00000.png"))).size == (16, 16)


def test_shipped_tiny_weights_are_what_the_script_makes(tmp_path):
    from tests.e2e._layout import tiny

    shipped = ROOT / "wanflow" / "assets" / "wanflow-tiny"
    made = tiny.write_quickstart(tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in made)
    assert names == sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    assert len(names) == 6
    for name in names:
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    assert sum((shipped / n).stat().st_size for n in names) < 20 * 2**20


def test_an_archive_sent_as_a_tar_is_imported_and_reproduces_bit_for_bit(tmp_path, monkeypatch, capsys):
    import tarfile

    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    small = ["--set", "video.frames=1", "--set", "video.width=16", "--set", "video.height=16",
             "--set", "sampler.steps=1", "--quiet"]
    assert main(["run", str(QUICKSTART), "--runs-dir", str(tmp_path / "mine"), *small]) == 0
    (archive,) = archives(tmp_path / "mine")
    sent = tmp_path / "sent.tar.gz"
    with tarfile.open(sent, "w:gz") as tar:
        tar.add(archive, arcname=archive.name)
    theirs = tmp_path / "theirs"
    capsys.readouterr()
    assert main(["import", str(sent), "--runs-dir", str(theirs)]) == 0
    (imported,) = archives(theirs)
    assert imported.name == archive.name and f"-> {imported}" in capsys.readouterr().out
    assert (imported / "outputs" / "video.mp4").read_bytes() == (archive / "outputs" / "video.mp4").read_bytes()
    assert main(["runs", "--runs-dir", str(theirs)]) == 0
    assert str(imported) in capsys.readouterr().out
    assert main(["reproduce", str(imported), "--no-cache", "--quiet", "--runs-dir", str(theirs)]) == 0
    assert main(["import", str(sent), "--runs-dir", str(theirs)]) == 2  # never over an existing run
    assert "already exists" in capsys.readouterr().err
