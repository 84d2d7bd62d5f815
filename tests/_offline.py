"""A test's working folder with no weights anywhere: offline, a private cache, messages relative."""

from __future__ import annotations

from pathlib import Path

import pytest


def offline_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cwd = tmp_path, an empty models root, downloads forbidden, a fresh cache under tmp_path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    monkeypatch.setenv("WANFLOW_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("WANFLOW_OFFLINE", "1")
    monkeypatch.setenv("WANFLOW_CACHE", str(tmp_path / "cache"))
