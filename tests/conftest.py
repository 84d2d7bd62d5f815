"""Suite-wide settings: one torch thread (tiny models; the suite runs one worker per core, and
two threads per worker stall on every small op), structlog's defaults and a fresh registry."""

from __future__ import annotations

import pytest
import structlog

from wanflow.plugins import get_registry as _cached_registry


@pytest.fixture(autouse=True)
def _isolated_logging_and_plugins(monkeypatch):
    monkeypatch.setenv("WANFLOW_NO_PLUGINS", "0")  # restored (unset) after the test, even if the CLI set it
    yield
    structlog.reset_defaults()
    _cached_registry.cache_clear()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
