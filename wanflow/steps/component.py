"""Device and dtype of one model component: the run's ``[runtime]``, or ``[models.X].dtype``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wanflow.steps.runtime import runtime_of, torch_dtype


def component_runtime(params: Mapping[str, Any], dtype: str = "auto", device: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype) for a component whose recipe dtype is ``dtype``, on ``device``.

    ``"auto"`` follows ``[runtime]`` (the dtype itself resolved by device); any other value, taken
    from ``[models.<component>]`` by the pipeline and kept in the step's keyed configuration, is
    that component's (a text encoder on the CPU computes in fp32 unless its dtype says otherwise)."""
    if device == "auto":
        run_device, run_dtype = runtime_of(params)
    else:
        run_device, run_dtype = runtime_of({**params, "runtime.device": device})
    return run_device, run_dtype if dtype == "auto" else torch_dtype(dtype)
