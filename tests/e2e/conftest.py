"""Fixtures: a models root holding every official family in its ModelScope layout (tiny weights),
a private cache, and a runner that goes through the same functions as ``wanflow run``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tomlkit

from tests.e2e._layout import write_models_root
from tests.e2e._layout_longcat import write_longcat_models_root


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_root(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def longcat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LongCat-Video's tiny release (and a Wan DiT beside it), written once for every LongCat test."""
    return write_longcat_models_root(tmp_path_factory.mktemp("longcat-models"))


def write_images(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Two random 40x56 PNGs, "first" and "last" (another aspect ratio than the videos: resized
    and centre-cropped), from seeds ``seed`` and ``seed + 1``."""
    from PIL import Image

    out = {}
    for i, name in enumerate(("first", "last")):
        pixels = np.random.default_rng(seed + i).integers(0, 256, (40, 56, 3), dtype=np.uint8)
        out[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(out[name])
    return out


def use_models(models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """WANFLOW_MODELS at the tiny repositories, offline, and a fresh cache under ``tmp_path``;
    the runs dir under ``tmp_path``."""
    monkeypatch.setenv("WANFLOW_MODELS", str(models_root))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("inputs"))


@pytest.fixture()
def env(models_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny repositories, offline, a fresh cache; returns the runs dir."""
    return use_models(models_root, tmp_path, monkeypatch)


def write_recipe(folder: Path, model: str, inputs: dict | None = None, **tables: dict) -> Path:
    """A small recipe: 32×32, 5 frames, 2 steps, seed 0, plus the given tables."""
    doc = {"schema": 1, "name": model.replace(".", "_"), "model": model,
           "prompt": {"text": "a red ball bouncing", "negative": "blurry"},
           "video": {"width": 32, "height": 32, "frames": 5},
           "sampler": {"steps": 2, "seed": 0}}
    for table, values in tables.items():  # a list is an array of tables ([[lora]])
        doc[table] = values if isinstance(values, list) else {**doc.get(table, {}), **values}
    if inputs:
        doc["inputs"] = {k: str(v) for k, v in inputs.items()}
    path = folder / f"{doc['name']}.toml"
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")
    return path
