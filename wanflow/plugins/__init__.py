"""Plugins: hook specs, the built-ins, and the registry every other layer consults."""

from __future__ import annotations

import functools

from wanflow.plugins.hookspecs import SamplerEntry, SaverEntry, hookimpl
from wanflow.plugins.registry import NO_PLUGINS_ENV, Registry, build_registry

__all__ = ["NO_PLUGINS_ENV", "Registry", "SamplerEntry", "SaverEntry", "build_registry", "get_registry",
           "hookimpl"]


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry: built-ins plus installed plugins (unless turned off)."""
    return build_registry()
