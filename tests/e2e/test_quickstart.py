"""`wanflow run recipes/quickstart.toml`: no download, an mp4, and a second run that is all hits."""

from __future__ import annotations

import io
import json
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
    assert re.findall(r"\((\d+) hit, (\d+) computed\)", out) == [("0", "6"), ("6", "0")]  # text, negative text, denoise, decode, save, metadata
    first, second = archives(runs)
    video = first / "outputs" / "video.mp4"
    assert video_shape(video) == (17, 64, 64)  # the tiny family's 17 frames of 64×64
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


def test_shipped_tiny_weights_are_the_trained_ones_docs_record_and_load_as_the_official_layout():
    """The files under wanflow/assets/wanflow-tiny are byte for byte the ones docs/quickstart-model.md
    lists (the trained model, not the seeded one tests build), together under 20 MB, every weight
    bf16 under the official keys that wanflow's loaders read."""
    import hashlib

    from safetensors import safe_open

    from scripts.quickstart.init_dit import quickstart_config
    from wanflow.models.dit_config import from_official

    def astuple(c, *names):
        return tuple(getattr(c, n) for n in names)

    shipped = ROOT / "wanflow" / "assets" / "wanflow-tiny"
    doc = (ROOT / "docs" / "quickstart-model.md").read_text(encoding="utf-8")
    table = doc[doc.index("### Shipped files"):]
    listed = dict(re.findall(r"^\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|$", table, re.M))
    files = sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    assert sorted(listed) == files and len(files) == 6
    for name in files:
        assert hashlib.sha256((shipped / name).read_bytes()).hexdigest() == listed[name], name
    assert sum((shipped / n).stat().st_size for n in files) < 20 * 2**20
    for name in (n for n in files if n.endswith(".safetensors")):
        with safe_open(str(shipped / name), "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}, name
    config = from_official(json.loads((shipped / "dit" / "config.json").read_text()), "config.json")
    assert (config.dim, config.num_layers, config.num_heads, config.text_dim) == \
        astuple(quickstart_config(), "dim", "num_layers", "num_heads", "text_dim")


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
