"""Device and dtype of one model component: the run's ``[runtime]``, or ``[models.X].dtype``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.steps.runtime import runtime_of, torch_dtype


def component_runtime(params: Mapping[str, Any], dtype: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype) for a component whose recipe dtype is ``dtype``.

    ``"auto"`` follows ``[runtime].dtype`` (itself resolved by device); any other name, taken
    from ``[models.<component>].dtype`` by the pipeline and kept in the step's keyed
    configuration, is that component's compute dtype."""
    device, run_dtype = runtime_of(params)
    return device, run_dtype if dtype == "auto" else torch_dtype(dtype)
