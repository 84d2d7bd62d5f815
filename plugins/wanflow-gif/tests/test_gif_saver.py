"""The GIF plugin: discovered through its entry point, saves exact frames, refuses collisions."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from PIL import Image, ImageSequence

import wanflow_gif
from wanflow.errors import PluginError
from wanflow.plugins import SaverEntry, build_registry, hookimpl


def test_entry_point_registers_the_gif_saver_and_its_version():
    registry = build_registry(entry_points=True)
    assert registry.savers["gif"].suffix == ".gif"
    assert registry.owner("saver", "gif") == "gif"
    assert ("gif", "0.1.0") in registry.plugins()


def test_no_plugins_switch_leaves_only_builtins():
    registry = build_registry(entry_points=False)
    assert "gif" not in registry.savers and "mp4" in registry.savers


def test_saved_frames_read_back_identically(tmp_path):
    rng = np.random.default_rng(0)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    frames = palette[rng.integers(0, 4, size=(5, 8, 12))]  # (T, H, W, 3), 4 colours: no dithering
    save = build_registry(entry_points=True).savers["gif"].load()
    (path,) = save(frames, tmp_path / "clip.gif", fps=10, metadata={"seed": 7})
    with Image.open(path) as gif:
        decoded = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
        assert gif.info["duration"] == 100
        assert json.loads(gif.info["comment"]) == {"seed": 7}
    np.testing.assert_array_equal(decoded, frames)


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        wanflow_gif.save_gif(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "x.gif", 8, {})


def test_a_second_plugin_claiming_gif_is_an_error_naming_both():
    rival = types.SimpleNamespace(wanflow_savers=hookimpl(lambda: [SaverEntry("gif", ".gif", lambda: None)]))
    with pytest.raises(PluginError, match="'gif'.*'gif'.*'rival'"):
        build_registry([("rival", rival)], entry_points=True)
