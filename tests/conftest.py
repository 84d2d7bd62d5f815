"""Suite-wide isolation: every test starts with structlog's defaults and the registry rebuilt."""

from __future__ import annotations

import pytest
import structlog


@pytest.fixture(autouse=True)
def _isolated_logging_and_plugins(monkeypatch):
    monkeypatch.setenv("WANFLOW_NO_PLUGINS", "0")  # restored (unset) after the test, even if the CLI set it
    yield
    structlog.reset_defaults()
    from wanflow.plugins import get_registry

    get_registry.cache_clear()
