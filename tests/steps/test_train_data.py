"""Checking an unchanged dataset again decodes nothing: probe answers are kept in the cache."""

from __future__ import annotations

import os

from tests.e2e._train import write_dataset, write_train_recipe
from wanflow.recipe import load_recipe
from wanflow.steps import train_data


def test_a_second_check_of_an_unchanged_dataset_opens_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
    metadata = write_dataset(tmp_path / "data")
    resolved = load_recipe(write_train_recipe(tmp_path, "wanflow-tiny", metadata, width=64, height=64))
    opened = []
    real = train_data.probe_media

    def counting(path, kind, frames):
        opened.append(path.name)
        return real(path, kind, frames)

    monkeypatch.setattr(train_data, "probe_media", counting)
    first = train_data.training_dataset(resolved)
    assert len(opened) == 4
    opened.clear()
    assert train_data.training_dataset(resolved) == first and opened == []
    clip = tmp_path / "data" / "clips" / "2_blue.mp4"
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))  # touched: opened again
    train_data.training_dataset(resolved)
    assert opened == ["2_blue.mp4"]
